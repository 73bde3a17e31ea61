#!/usr/bin/env bash
# ZeroSiam on the same 32 GSM8K test problems with a float32 and a 4-bit (NF4) base, one after the other, each under
# /usr/bin/time -v (wall time, peak RSS); then the float32 adapter and its base scored by scripts/evaluate.py and by
# lm-evaluation-harness on the shipped local task, on the same 32 problems with the same 96-token budget.
# Run from the repository root: bash results/qlora-gsm8k-32/run.sh
set -euo pipefail
OUT=results/qlora-gsm8k-32
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
: "${ZEROSIAM_DATA_DIR:?must name a folder holding gsm8k/test.jsonl: this study runs offline}"

# --- adapt: configs/adapt.yaml is online ZeroSiam, 32 problems, batches of 8, 96 new tokens
for variant in fp32 4bit; do
  flags=(); [ "$variant" = 4bit ] && flags=(--load_in_4bit true)
  /usr/bin/time -v -o "$OUT/adapt-$variant.time" python scripts/adapt.py --config configs/adapt.yaml "${flags[@]}" \
    --output_dir "outputs/qlora-$variant" --overwrite true
  mkdir -p "$OUT/adapt-$variant"
  cp "outputs/qlora-$variant/run.json" "outputs/qlora-$variant/predictions.jsonl" "$OUT/adapt-$variant/"
done

# --- the project's evaluation: base and float32 adapter
python scripts/evaluate.py --model llama --adapter outputs/qlora-fp32 --max_samples 32 --max_new_tokens 96 \
  --batch_size 8 --output_dir outputs/qlora-fp32-eval --overwrite true
cp -r outputs/qlora-fp32-eval "$OUT/evaluate"

# --- lm-evaluation-harness: base and float32 adapter on the exported embedded model
python scripts/export_model.py --model llama --output_dir outputs/smollm2-135m-instruct --overwrite true
for variant in base adapter; do
  peft=""; [ "$variant" = adapter ] && peft=",peft=outputs/qlora-fp32"
  lm_eval --model hf --model_args "pretrained=outputs/smollm2-135m-instruct,dtype=float32$peft" \
    --tasks zerosiam_gsm8k --include_path configs/lm_eval --apply_chat_template --gen_kwargs max_gen_toks=96 \
    --limit 32 --batch_size 8 --device cpu --log_samples --output_path "$OUT/lm_eval-$variant"
done
