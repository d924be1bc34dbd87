"""Text cleaning for parallel corpora: pure functions a Beam ``DoFn`` (or a notebook) calls per record.

- ``normalize``: Unicode/whitespace/control-character normalization, gettext accelerator stripping,
  placeholder and number extraction, stable dedupe/decontamination keys.
- ``scripts``: Unicode script detection from a code-point range table and the scripts each language
  is expected to be written in.
- ``filters``: pair filters with reason codes (``REASONS``), ``check_pair`` and its batched twin
  ``check_pairs``.
"""
