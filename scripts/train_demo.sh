#!/usr/bin/env bash
# Train the bundled CL-Net demo model end to end on CPU (about 25 minutes on 2 busy cores, ~10 on idle ones).
#
#   stage 1     clnet train        general encoder + decoder "abdomen"
#   stage 2     clnet add-decoder  "spine_ribs"       on the frozen encoder
#   stage 3     clnet add-decoder  "vessels_muscles"  on the frozen encoder
#   stage 4     clnet prune        "vessels_muscles"  (structured, rewinding + distillation)
#   finalise    clnet segment + clnet evaluate on example_ct / example_ct_sm, README, manifest metrics
#
# The only labelled data is ONE scan whose labels are TotalSegmentator --fast PREDICTIONS (not ground
# truth); the model is trained and evaluated on that same scan. It is a demonstration, not for clinical use.
#
# Environment: PYTHON (default: python), CLNET_DATA (default: ../shared/data beside the repository),
# WORK (scratch folder, default /tmp/clnet_demo), OUT (default: the bundled models/demo folder),
# SMOKE=1 for a 1-2 minute end-to-end check with a handful of steps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DATA="${CLNET_DATA:-$ROOT/../shared/data}"
WORK="${WORK:-/tmp/clnet_demo}"
OUT="${OUT:-$ROOT/CLNetSegmentation/clnet/models/demo}"
SMOKE="${SMOKE:-0}"

if [[ "$SMOKE" == "1" ]]; then
  S1=8; S2=6; SP=4; ROUNDS=1; EVERY=4
else
  S1="${STEPS1:-200}"; S2="${STEPS2:-80}"; SP="${STEPS_PRUNE:-30}"; ROUNDS="${ROUNDS:-2}"; EVERY=50
fi

for f in example_ct.nii.gz example_seg_fast_force_split.nii.gz labels.json; do
  [[ -f "$DATA/$f" ]] || { echo "missing $DATA/$f (set CLNET_DATA)" >&2; exit 2; }
done
mkdir -p "$WORK"
cat > "$WORK/data.csv" <<CSV
image,label,label_map,case_id
$DATA/example_ct.nii.gz,$DATA/example_seg_fast_force_split.nii.gz,$DATA/labels.json,example_ct
CSV

ABDOMEN=spleen,kidney_right,kidney_left,gallbladder,liver,stomach,pancreas,adrenal_gland_right,adrenal_gland_left,small_bowel,duodenum,colon,urinary_bladder,prostate
SPINE_RIBS=vertebrae_T11,vertebrae_T12,vertebrae_L1,vertebrae_L2,vertebrae_L3,vertebrae_L4,vertebrae_L5,vertebrae_S1,sacrum,rib_left_7,rib_left_8,rib_left_9,rib_left_10,rib_left_11,rib_left_12,rib_right_7,rib_right_8,rib_right_9,rib_right_10,rib_right_11,rib_right_12,costal_cartilages,hip_left,hip_right,femur_left,femur_right,spinal_cord
VESSELS_MUSCLES=aorta,inferior_vena_cava,portal_vein_and_splenic_vein,iliac_artery_left,iliac_artery_right,iliac_vena_left,iliac_vena_right,iliopsoas_left,iliopsoas_right,autochthon_left,autochthon_right,gluteus_maximus_left,gluteus_maximus_right,gluteus_medius_left,gluteus_medius_right,gluteus_minimus_left,gluteus_minimus_right

COMMON=(--data "$WORK/data.csv" --patch 48 64 64 --batch-size 2 --seed 0 --checkpoint-every "$EVERY" --no-eval -q)
CLNET=("$PYTHON" -m clnet)
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

stamp "stage 1: encoder + abdomen ($S1 steps)"
"${CLNET[@]}" train "${COMMON[@]}" --decoder "abdomen=$ABDOMEN" -o "$WORK/stage1" --encoder small \
  --decoder-width 0.5 --spacing 3 3 3 --fast-spacing 4.5 4.5 4.5 --steps "$S1" --lr 3e-3 --warmup 20 \
  --work-dir "$WORK/w1" --overwrite --name demo \
  --description "CL-Net demonstration model trained on one CT with TotalSegmentator-predicted labels; not for clinical use."

stamp "stage 2: add-decoder spine_ribs ($S2 steps)"
"${CLNET[@]}" add-decoder "${COMMON[@]}" --model "$WORK/stage1" --name spine_ribs --anatomies "$SPINE_RIBS" \
  -o "$WORK/stage2" --steps "$S2" --lr 3e-3 --work-dir "$WORK/w2" --overwrite

stamp "stage 3: add-decoder vessels_muscles ($S2 steps)"
"${CLNET[@]}" add-decoder "${COMMON[@]}" --model "$WORK/stage2" --name vessels_muscles \
  --anatomies "$VESSELS_MUSCLES" -o "$WORK/stage3" --steps "$S2" --lr 3e-3 --work-dir "$WORK/w3" --overwrite

stamp "stage 4: prune vessels_muscles ($ROUNDS round(s) x $SP steps)"
"${CLNET[@]}" prune "${COMMON[@]}" --model "$WORK/stage3" --decoder vessels_muscles -o "$WORK/stage4" \
  --max-dice-drop 0.03 --rounds "$ROUNDS" --fraction 0.25 --steps "$SP" --lr 1e-3 --warmup 5 \
  --work-dir "$WORK/w4" --overwrite | tee "$WORK/prune_report.txt"
# (Short demo runs rewind to the trained weights; with a longer schedule pass
#  --rewind "$WORK/w3/rewind/vessels_muscles.safetensors" for lottery-ticket rewinding to early weights.)

stamp "finalise: segment + evaluate, README, manifest metrics"
"$PYTHON" "$ROOT/scripts/demo_finalize.py" --model "$WORK/stage4" --data "$DATA" --work "$WORK" --out "$OUT" \
  --seconds "$(( $(date +%s) - T0 ))" --prune-report "$WORK/prune_report.txt"
stamp "done: $OUT"
