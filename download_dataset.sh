#!/usr/bin/env bash
# Fetch the original DVBPR datasets into data/ (resumable; verifies each file is a .npy).
# Usage: bash download_dataset.sh [AmazonFashion6ImgPartitioned AmazonWomenWithImgPartitioned
#                                  AmazonMenWithImgPartitioned TradesyImgPartitioned]
# With no argument it fetches AmazonFashion (3.3 GB), as the original script did.
set -euo pipefail
BASE_URL="http://cseweb.ucsd.edu/~wckang/DVBPR"
DEST="${DVBPR_DATA_DIR:-data}"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(AmazonFashion6ImgPartitioned)
mkdir -p "$DEST"

fetch() {
  local url="$1" out="$2"
  if ! curl --fail --location --continue-at - --retry 3 --connect-timeout 20 -o "$out.part" "$url"; then
    echo "error: could not download $url (offline, or the server moved the file)." >&2
    echo "       Partial data is kept in $out.part; run this script again to resume." >&2
    exit 1
  fi
  mv "$out.part" "$out"
}

for name in "${names[@]}"; do
  case "$name" in
    AmazonFashion6ImgPartitioned|AmazonWomenWithImgPartitioned|AmazonMenWithImgPartitioned|TradesyImgPartitioned) ;;
    *) echo "error: unknown dataset '$name'" >&2; exit 2 ;;
  esac
  out="$DEST/$name.npy"
  if [ -f "$out" ]; then echo "$out already present"; continue; fi
  echo "downloading $name.npy into $DEST/"
  fetch "$BASE_URL/$name.npy" "$out"
  if [ "$(head -c 6 "$out" | od -An -c | tr -d ' ')" != "223NUMPY" ]; then
    echo "error: $out is not a .npy file (an HTML error page?); removed it." >&2
    rm -f "$out"; exit 1
  fi
  echo "ok: $out ($(du -h "$out" | cut -f1))"
done
