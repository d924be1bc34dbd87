"""Pure core of the platform: text, readers, models, losses, training. Never imports flows/."""
