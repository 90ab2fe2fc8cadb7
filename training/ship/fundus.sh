#!/bin/bash
# fundus-resnet18 (issue 26), the recipe of the shipped version: package, evaluate every domain's validation and held-out parts
# (the int8-stored file that is served), fit the refer point on every domain's validation part,
# the urgent point on the pooled validation parts, and write the card.
#   CK=runs/fundus-resnet18-v4/best.pt VERSION=4.0.0 SENS=0.87 bash training/ship/fundus.sh
# (v2's recipe is fundus_v2.sh; v3 was this script with CK=runs/fundus-resnet18-3dom/best.pt VERSION=3.0.0.)
set -ex
P=".venv/bin/python"
CK=${CK:-runs/fundus-resnet18-v4/best.pt}
VERSION=${VERSION:-4.0.0}
SENS=${SENS:-0.87}
W=/tmp/fundus-ship; rm -rf $W; mkdir -p $W
$P -m training.ship.card --checkpoint $CK --key fundus-resnet18 --version $VERSION --int8 --out-dir $W/int8
F=$W/int8/fundus-resnet18.pt
D=../shared/data/fundus-train,../shared/data/fundus-idrid,../shared/data/fundus-odir
E="$P -m training.evaluate --checkpoint $F --threads 2 --n-bootstrap 1000"
O=${O:-runs/fundus-eval-$VERSION}
if [ "${EVAL:-1}" = 1 ]; then  # EVAL=0: points and card anew from the predictions already in $O
  $E --data $D --split val --part 0 --subset raw --out $O/val-eyepacs
  $E --data $D --split val --part 1 --out $O/val-idrid
  $E --data $D --split val --part 2 --out $O/val-odir
  $E --data $D --split test --part 0 --subset raw --out $O/test
  $E --data $D --split test --part 1 --out $O/idrid-test
  $E --data $D --split test --part 2 --out $O/odir-test
  $E --data ../shared/data/fundus-dev --split all --out $O/dev
fi
CHECKS=(--check "EyePACS test split=$O/test/predictions.csv"
  --check "IDRiD held-out part=$O/idrid-test/predictions.csv"
  --check "ODIR held-out part=$O/odir-test/predictions.csv"
  --check "fundus-dev raw photos=$O/dev/predictions.csv")
$P -m training.evaluate.operating_point --checkpoint $F --point refer --sensitivity $SENS \
  --fit-domain "EyePACS=$O/val-eyepacs/predictions.csv" --fit-domain "IDRiD=$O/val-idrid/predictions.csv" \
  --fit-domain "ODIR=$O/val-odir/predictions.csv" \
  --fitted-on "each domain's validation part (EyePACS 742 images, IDRiD 58, ODIR 208): the largest threshold with sensitivity >= $SENS on every one" \
  "${CHECKS[@]}"
$P -m training.evaluate.operating_point --checkpoint $F --point urgent --sensitivity 0.80 \
  --fit $O/val-eyepacs/predictions.csv --fit $O/val-idrid/predictions.csv --fit $O/val-odir/predictions.csv \
  --fitted-on "the pooled validation parts (EyePACS, IDRiD, ODIR; 22 proliferative eyes)" "${CHECKS[@]}"
$P -m training.evaluate.keywords --predictions $O/odir-test/predictions.csv --labels ../shared/data/fundus-odir/labels.csv \
  --checkpoint $F --title "ODIR held-out part: eyes with other findings" --out $O/odir-keywords.md
$P -m training.ship.card --checkpoint $F --key fundus-resnet18 --version $VERSION \
  --eval "test=Held-out EyePACS test split of fundus-train (742 images, 371 patients; never trained on by any stage)=$O/test" \
  --eval "idrid=IDRiD held-out part: 58 raw photos (Kowa VX-10, India) never trained on=$O/idrid-test" \
  --eval "odir=ODIR held-out part: 208 photos of other patients (China; Canon, Zeiss, Kowa) never trained on=$O/odir-test" \
  --eval "external=fundus-dev: 79 raw EyePACS camera photos of 46 other patients (never trained on)=$O/dev" \
  --eval "val=Validation: EyePACS validation patients (742 images)=$O/val-eyepacs" \
  --eval "val_idrid=Validation: IDRiD validation part (58 photos)=$O/val-idrid" \
  --eval "val_odir=Validation: ODIR validation part (208 photos)=$O/val-odir" \
  --command "python -m training.train --config training/configs/fundus_resnet18.yaml --data ../shared/data/fundus-train --out runs/fundus-resnet18   # stage 1: 224 px from scratch, 22 epochs" \
  --command "python -m training.train --config training/configs/fundus_resnet18_384.yaml --data ../shared/data/fundus-train --out runs/fundus-resnet18-384   # stage 2: warm start at 384 px, 6 epochs (v1.1/v1.2)" \
  --command "python -m training.train --config training/configs/fundus_resnet18_384_idrid.yaml --data ../shared/data/fundus-train,../shared/data/fundus-idrid --out runs/fundus-resnet18-idrid   # stage 3 (v2.0): EyePACS + IDRiD, camera augmentation" \
  --command "python -m training.train --config training/configs/fundus_resnet18_384_3dom.yaml --data $D --out runs/fundus-resnet18-3dom   # stage 4 (v3.0): from v2.0, EyePACS + IDRiD + ODIR, patients namespaced per dataset, domain_balance 0.25" \
  --command "python -m training.train --config training/configs/fundus_resnet18_384_v4.yaml --data $D --out runs/fundus-resnet18-v4   # stage 5 (v4.0): from v3.0, every domain drawn at one referable prevalence (30 %), epoch chosen by the mean of each dataset's validation AUC" \
  --command "CK=$CK VERSION=$VERSION SENS=$SENS bash training/ship/fundus.sh   # int8 storage; evaluate --part per dataset; refer point on every domain's validation part" \
  --limit "Trained from scratch (no ImageNet weights were reachable) on 3,705 EyePACS images, 289 IDRiD photos and 1,040 ODIR photos, on a 2-core CPU; published systems use ~100x the data (Gulshan 2016: 128k images, referable-DR AUC 0.991)." \
  --limit "The refer point keeps sensitivity >= $SENS on each training domain's validation part; a camera none of them resembles may run its probabilities higher or lower. A clinic with its own camera should fit a site profile (python -m training.site_profile) on 100-300 of its own graded photos." \
  --limit "384-px input after the retina crop: microaneurysms (the only sign of mild DR) span a pixel or two, so grade 1 is not recognised." \
  --limit "ODIR grades are mapped from graders' keywords and its photos are 320 px here; the held-out parts of IDRiD (58) and ODIR (208) and fundus-dev (79) are small: their intervals are wide." \
  --limit "Eyes with other diseases (glaucoma, AMD, cataract, myopia) and no DR are negatives of this screen; the model has no output for those diseases (see the card's table of them)." \
  --out-dir $W/card
cp $W/card/fundus-resnet18.pt models/fundus-resnet18.pt
cp $W/card/fundus-resnet18.md models/fundus-resnet18.md
rm -rf models/cards/fundus-resnet18 && cp -r $W/card/cards/fundus-resnet18 models/cards/fundus-resnet18
cat $O/odir-keywords.md >> models/fundus-resnet18.md
# the served int8 engine is re-measured on this checkpoint's validation split (or not served)
$P -m training.ship.quantize --checkpoint models/fundus-resnet18.pt --data $D
