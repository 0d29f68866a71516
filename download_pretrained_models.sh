#!/usr/bin/env bash
# Fetch pretrained weights into pretrained/ (resumable; verifies what can be verified).
#   torchvision ImageNet weights: Inception v3 (Inception Score, pm/) and AlexNet (4096-d visual features for the
#   baselines). Their file names carry the first 8 hex digits of the SHA-256, which is checked.
#   fidelity: torch-fidelity's Inception v3, the TensorFlow FID network, for KID and FID over Inception features
#   (pm/ --table; no checksum is published for it).
#   The original TensorFlow checkpoints of DVBPR and the GAN, the files its README's script fetches (no checksum
#   published; the converter checks each tensor's crc32c). dvbpr/main.py and gan/main.py --from-tf turn them into
#   runs of this project, without TensorFlow; the commands are printed at the end.
# Usage: bash download_pretrained_models.sh [torchvision] [fidelity] [original]     (default: all three)
set -euo pipefail
DEST="${DVBPR_PRETRAINED_DIR:-pretrained}"
ORIGINAL_URL="http://cseweb.ucsd.edu/~wckang/DVBPR"
TORCHVISION_URL="https://download.pytorch.org/models"
FIDELITY_URL="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(torchvision fidelity original)

fetch() {
  local url="$1" out="$2"
  mkdir -p "$(dirname "$out")"
  if [ -f "$out" ]; then echo "$out already present"; return; fi
  if ! curl --fail --location --continue-at - --retry 3 --connect-timeout 20 -o "$out.part" "$url"; then
    echo "error: could not download $url (offline, or the file moved)." >&2
    echo "       Partial data is kept in $out.part; run this script again to resume." >&2
    exit 1
  fi
  mv "$out.part" "$out"
  echo "ok: $out"
}

verify_torchvision() {
  local file="$1" expected actual
  expected=$(basename "$file" .pth); expected=${expected##*-}
  actual=$(sha256sum "$file" | cut -c1-${#expected})
  if [ "$actual" != "$expected" ]; then
    echo "error: $file fails its checksum ($actual != $expected); removed it, run again." >&2
    rm -f "$file"; exit 1
  fi
}

for part in "${parts[@]}"; do
  case "$part" in
    torchvision)
      for f in inception_v3_google-0cc3c7bd.pth alexnet-owt-7be5be79.pth; do
        fetch "$TORCHVISION_URL/$f" "$DEST/$f"
        verify_torchvision "$DEST/$f"
      done ;;
    fidelity)
      fetch "$FIDELITY_URL/weights-inception-2015-12-05-6726825d.pth" \
            "$DEST/weights-inception-2015-12-05-6726825d.pth" ;;
    original)
      for f in DVBPR_auc_100_39728.ckpt.data-00000-of-00001 DVBPR_auc_100_39728.ckpt.index \
               DVBPR_auc_100_39728.ckpt.meta DVBPR.log; do
        fetch "$ORIGINAL_URL/$f" "$DEST/original/DVBPR/$f"
      done
      for f in DCGAN.model-311502.data-00000-of-00001 DCGAN.model-311502.index DCGAN.model-311502.meta checkpoint; do
        fetch "$ORIGINAL_URL/$f" "$DEST/original/GAN/$f"
      done ;;
    *) echo "error: unknown part '$part' (torchvision, fidelity or original)" >&2; exit 2 ;;
  esac
done

if [[ " ${parts[*]} " == *" original "* ]]; then
  echo "Convert the original's checkpoints into runs (no TensorFlow needed; DVBPR needs the AmazonFashion dataset):"
  echo "  python dvbpr/main.py --preset original --from-tf $DEST/original/DVBPR/DVBPR_auc_100_39728.ckpt" \
       "--dataset data/AmazonFashion6ImgPartitioned.npy --out runs/dvbpr_original"
  echo "  python gan/main.py --preset original --from-tf $DEST/original/GAN/DCGAN.model-311502 --out runs/gan_original"
fi
