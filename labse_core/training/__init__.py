"""The training runtime both trainers share (labse_core.pretrain, labse_core.finetune import it and
never each other), one concept per module:

    config       RunConfig (optimizer, stopping, systems, checkpoints, logging), SpecialIds, and the
                 one preset -> --config -> --set loader; --help's list of settings
    distributed  DistEnv, process group set-up, all_reduce_sum / any_rank / gather_objects, DDP wrap
    optim        AdamW parameter groups, warm-up + decay schedule, clipped step
    checkpoint   RNG state, step-N/ folders (atomic, keep-N), resume
    stopping     max_steps / stop_at_step / time budget, agreed by all ranks
    result       TrainResult, the fields every run returns, and its JSON summary
    tracking     MLflow on rank 0, the progress bar
    cli          the trainers' shared command line (python -m labse_core.{pretrain,finetune}.train)
"""
