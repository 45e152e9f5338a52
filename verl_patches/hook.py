"""Imported by verl itself in every process (`VERL_USE_EXTERNAL_MODULES=verl_patches.hook`): applies the patches."""

import verl_patches

verl_patches.apply_all()
