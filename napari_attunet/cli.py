"""The command line: ``napari-attunet predict | evaluate | info | convert | train | demo``.

This module only parses the arguments and dispatches: each command lives in ``commands/``.
Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import commands
from .commands.common import orientation_arg, sentence
from .commands.predict import FormatAction
from .models.registry import FAMILIES, REGISTRY


def _predict(args: argparse.Namespace) -> int:
    """``predict``: on this machine scan by scan, or a cohort (a scheduler, or zarr stores)."""
    from .commands import cohort, predict

    predict.check_formats(args)
    predict.check_run_arguments(args)
    if cohort.wanted(args):
        return cohort.run(args)
    return predict.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-attunet", description="Attention U-Net inference and attention maps."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--family", choices=FAMILIES)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=commands.info.info)

    conv = sub.add_parser(
        "convert", help="turn any checkpoint into a native .safetensors, and/or store an int8 model"
    )
    conv.add_argument("checkpoint")
    conv.add_argument(
        "out", nargs="?", help="the .safetensors file to write (optional with --int8: the int8 model "
        "then goes beside CHECKPOINT)"
    )  # fmt: skip
    conv.add_argument(
        "--int8",
        action="store_true",
        help="also calibrate an OpenVINO int8 model on the scans in --calibrate DIR and store it "
        "beside the weights as <stem>.int8/, which predict --precision int8 then uses",
    )
    conv.add_argument("--calibrate", metavar="DIR", help="with --int8: the folder of scans to calibrate on")
    conv.add_argument("--tile", type=int, nargs="+", metavar="N", help="with --int8: the calibration tile")
    conv.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT (and, with --int8, <stem>.int8/)"
    )
    conv.add_argument("--family", choices=FAMILIES)
    conv.add_argument("--class-names", nargs="+", metavar="NAME")
    conv.add_argument(
        "--class-codes",
        metavar="JSON",
        help='DICOM SEG codes per class, a JSON file or text: {"NAME": {"category": '
        '"SCT:91723000:Anatomical Structure", "type": "SCT:...:..."}} (default: Tissue)',
    )
    conv.add_argument(
        "--normalization",
        metavar="MODE",
        help="none | zscore (NormalizeIntensityd) | zscore_nonzero (nonzero=True) | "
        "zscore_foreground | ct:LOW,HIGH | percentile:LOW,HIGH | "
        "range:A_MIN,A_MAX[,B_MIN,B_MAX[,noclip]] (ScaleIntensityRanged)",
    )
    conv.add_argument(
        "--spacing",
        nargs="+",
        type=float,
        metavar="MM",
        help="the voxel spacing the model was trained at, in array axis order",
    )
    conv.add_argument(
        "--gate-mode", choices=("concatenation", "concatenation_debug", "concatenation_residual")
    )
    conv.add_argument(
        "--align-corners", action="store_true", help="for official checkpoints trained with PyTorch 0.3"
    )
    conv.add_argument("--strides", metavar="S,S,...", help="MONAI down-sampling strides")
    conv.add_argument("--output", choices=("softmax", "sigmoid"))
    conv.add_argument(
        "--orientation",
        type=orientation_arg,
        metavar="CODE",
        help="how the training pipeline laid scans out: an axis code such as RAS "
        "(MONAI's Orientationd) or LPS, 'native' (as each file stores it) or "
        "'display' (as napari shows it); default by family",
    )
    conv.add_argument(
        "--axes",
        choices=("xyz", "zyx", "yxz", "xzy", "zxy", "yzx", "yx", "xy"),
        help="for orientation 'display' (and 2D networks): the order in which the "
        "network saw the displayed axes",
    )
    conv.set_defaults(func=commands.info.convert)

    pred = sub.add_parser("predict", help="segment scans, writing labels, gates and volumes")
    pred.add_argument("scans", nargs="+", help="NIfTI, NRRD, MHA/MHD files or DICOM folders")
    pred.add_argument("-c", "--checkpoint", required=True)
    pred.add_argument("-o", "--output", required=True, help="output folder")
    pred.add_argument(
        "--attention", action="store_true", help="also write every gate map, resampled to the scan grid"
    )
    pred.add_argument("--probabilities", action="store_true", help="also write probabilities")
    pred.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write the per-voxel uncertainty in [0, 1] (normalised entropy; "
        "with --tta, or the flips' disagreement where larger)",
    )
    pred.add_argument("--device", default="auto")
    pred.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        help='int8: OpenVINO int8 on the CPU, calibrated once (pip install "napari-attunet[int8]")',
    )
    pred.add_argument(
        "--calibrate",
        metavar="DIR",
        help="with --precision int8: calibrate on the scans in DIR (default: 16 windows of each scan)",
    )
    pred.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "torch", "openvino"),
        help="auto: OpenVINO on the CPU when installed (pip install "
        '"napari-attunet[openvino]"), else PyTorch',
    )
    pred.add_argument(
        "--normalization",
        metavar="MODE",
        help="none | zscore (NormalizeIntensityd) | zscore_nonzero (nonzero=True) | "
        "zscore_foreground | ct:LOW,HIGH | percentile:LOW,HIGH | "
        "range:A_MIN,A_MAX[,B_MIN,B_MAX[,noclip]] (ScaleIntensityRanged)",
    )
    pred.add_argument(
        "--orientation",
        type=orientation_arg,
        metavar="CODE",
        help="override the checkpoint's orientation for this run (see convert)",
    )
    pred.add_argument("--tile", type=int, nargs="+", metavar="N")
    pred.add_argument("--overlap", type=float, default=0.5)
    pred.add_argument("--tta", action="store_true", help="average over mirrored flips")
    pred.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        metavar="T",
        help="one per class (softmax: background's ignored); default: the most "
        "probable class for softmax models, 0.5 per channel for sigmoid",
    )
    pred.add_argument(
        "--min-size",
        type=int,
        default=0,
        metavar="VOXELS",
        help="drop connected components smaller than this",
    )
    pred.add_argument("--fill-holes", action="store_true")
    pred.add_argument(
        "--reference",
        metavar="REF_DIR",
        help="score each scan against its reference label map in this folder (same stem, or "
        "stem_seg, stem_labels, stem_gt...): Dice, HD95, ASSD columns in volumes.csv",
    )
    pred.add_argument(
        "--structures",
        action="store_true",
        help="also write <scan>_structures.csv: each class and connected component with its volume, "
        "mean uncertainty, uncertain mL and centroid",
    )
    pred.add_argument("--uncertain-over", type=float, default=0.5, metavar="LEVEL", help="for --structures")
    pred.add_argument("--structure-min-ml", type=float, default=0.1, metavar="ML", help="for --structures")
    pred.add_argument(
        "--format",
        default=".nii.gz",
        action=FormatAction,
        choices=(".nii.gz", ".nii", ".nrrd", ".mha", "zarr", "dicom-seg"),
        help="zarr: one OME-Zarr store per scan, written block by block (also when -o ends in .zarr); "
        "dicom-seg: a DICOM SEG of a DICOM series, <name>_seg.dcm (alone, other outputs asked for "
        "go to .nii.gz); may be given more than once",
    )
    pred.add_argument(
        "--seg-type",
        default="binary",
        choices=("binary", "labelmap", "fractional"),
        help="with --format dicom-seg: BINARY segments (default), one LABELMAP, or FRACTIONAL probabilities",
    )
    pred.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on Dask: local:N (N worker processes here) or tcp://host:8786; "
        "scans are spread over the workers and finished ones skipped",
    )
    pred.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist (default: refuse)"
    )
    pred.add_argument("-q", "--quiet", action="store_true")
    pred.set_defaults(func=_predict)

    tr = sub.add_parser("train", help="train an Attention U-Net (torchrun for several GPUs)")
    tr.add_argument("--images", help="folder of scans")
    tr.add_argument("--labels", help="folder of label maps, matched to the scans by name")
    tr.add_argument("--recipe", choices=("mni152",), help="a built-in data recipe")
    tr.add_argument("--export", help="with --recipe: also write its volumes to this folder")
    tr.add_argument("-o", "--output", required=True, help="the .safetensors to write (best epoch)")
    tr.add_argument("--class-names", nargs="+", metavar="NAME")
    tr.add_argument("--normalization", metavar="MODE", help="as for predict (default zscore)")
    tr.add_argument("--family", default="official", choices=FAMILIES)
    tr.add_argument(
        "--variant",
        choices=REGISTRY["official"].variants,
        help="official variant (default single_att_dsv, the paper's design)",
    )
    tr.add_argument(
        "--features",
        type=int,
        nargs="+",
        default=(8, 16, 32, 64, 128),
        help="encoder widths, finest first (official: exactly 5)",
    )
    tr.add_argument("--patch", type=int, nargs="+")
    tr.add_argument("--batch", type=int, default=2)
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--steps", type=int, default=50, help="steps per epoch")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT's .state.pt")
    tr.add_argument("-q", "--quiet", action="store_true")
    tr.set_defaults(func=commands.train.train)

    ev = sub.add_parser(
        "evaluate", help="Dice, HD95, ASSD and volumes of a prediction against a reference, per class"
    )
    ev.add_argument("prediction", help="labels: a scan file (NIfTI, NRRD, MHA...) or a result store (.zarr)")
    ev.add_argument("reference", help="the ground truth, in any of those formats, on any grid")
    ev.add_argument(
        "--csv", metavar="PATH", help="also write class,dice,hd95_mm,assd_mm,volume_pred_ml,volume_ref_ml"
    )
    ev.add_argument("--checkpoint", help="name the classes as this checkpoint does")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    ev.set_defaults(func=commands.evaluate.evaluate)

    demo = sub.add_parser("demo", help="napari with the MNI152 sample and the demo checkpoint")
    demo.add_argument("--screenshot", metavar="PNG", help="save the window after the run, and exit")
    demo.add_argument("--checkpoint", help="another checkpoint instead of the bundled demo")
    demo.set_defaults(func=commands.demo.demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # our errors are ValueErrors; each is one sentence
        print(f"napari-attunet {args.command}: {sentence(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-attunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
