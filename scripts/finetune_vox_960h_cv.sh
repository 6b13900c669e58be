#!/usr/bin/env bash
# Fine-tune the pre-trained Large (LV-60) model on LibriSpeech 960h with the values of the reference's
# finetune_vox_960h_cv.sh: no encoder freeze, LR 2e-5, 80k updates, time masking 0.25, channel masking 0.5. The reference's
# comments also name clip_norm 25 and required_seq_len_multiple 2 as small differences from the original setting;
# like the reference, this script does not apply them.
# Sets the values below (each can be overridden from the environment), then runs finetune_vox_960h.sh (the engine),
# which reads every other variable; extra arguments are appended to the train.py command. See docs/SCRIPTS.md.
set -a # export everything set here to the engine
set -euo pipefail

OUTPUT_DIR=${OUTPUT_DIR:-results/finetune_large_960h_cv} # ours: the reference writes to the engine's directory
LEARNING_RATE=${LEARNING_RATE:-0.00002}
FREEZE_FINETUNE_UPDATES=${FREEZE_FINETUNE_UPDATES:-0}
MAX_UPDATE=${MAX_UPDATE:-80000}
MASK_PROB=${MASK_PROB:-0.25}
MASK_CHANNEL_PROB=${MASK_CHANNEL_PROB:-0.5}
set +a

exec bash "$(dirname "${BASH_SOURCE[0]}")/finetune_vox_960h.sh" "$@"
