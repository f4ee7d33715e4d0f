"""The prediction engine: a generator that yields progress and returns a Prediction.

``iter_predict`` is the whole computation and knows nothing of any GUI; ``predict`` drives it
with a plain callback. The napari widget runs ``iter_predict`` in a worker thread. The user's
choices become one ``RunOptions`` (``options``); an in-memory image runs in this process
(``local``: plan, run, finish), a lazy one or a store block by block on Dask (``blockwise``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

from ..errors import InputError
from ..models import AttentionUNetBase
from .local import drive, iter_local
from .options import RunOptions
from .postprocess import Prediction
from .progress import Progress

__all__ = ["Progress", "RunOptions", "iter_predict", "predict"]


def iter_predict(
    image,
    model: AttentionUNetBase,
    options: RunOptions | None = None,
    *,
    cancel=None,
    **keywords,
) -> Generator[Progress, None, Prediction]:
    """Run ``model`` over ``image`` tile by tile, yielding a Progress after each batch.

    ``image`` is an array (napari axis order), a dask or zarr array, or a scan from
    ``napari_attunet.scans.io.read``, whose spacing, affine and file orientation are then used.
    The run's choices are ``options`` or ``predict``'s keywords (see ``RunOptions``): ``affine``
    places the array in world, so that the network sees the scan laid out as its checkpoint was
    trained (``orientation`` overrides it); ``region`` (slices) predicts only that part, as the
    whole run would see it; ``out`` writes an OME-Zarr store block by block. Returns (as the
    generator's value) a :class:`Prediction` on the input grid. Raises InputError for images
    the model cannot take and Cancelled when ``cancel`` fires.
    """
    from .lazy import is_lazy

    if options is None:
        options = RunOptions.from_keywords(**keywords)
    elif keywords:
        options = options.replace(**keywords)
    if options.blockwise or is_lazy(image):
        if str(options.precision).lower() == "int8":
            raise InputError("precision int8 runs on scans held in memory, not block by block; choose fp32.")
        from .blockwise import iter_blockwise

        return (yield from iter_blockwise(image, model, options, cancel=cancel))
    return (yield from iter_local(image, model, options, cancel=cancel))


def predict(
    image,
    model: AttentionUNetBase,
    spacing: Sequence[float] | None = None,
    channel_axis: int | None = None,
    normalization=None,
    tile: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    runtime: str = "auto",
    out=None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
    **options,
) -> Prediction:
    """Segment ``image`` with ``model``; see DESIGN.md for every argument and ``RunOptions``
    for the rest of the keywords.

    ``progress(done, total)`` is called after each batch; ``cancel`` (a threading.Event or a
    callable) stops the run within one batch and raises Cancelled.
    """
    run = RunOptions.from_keywords(
        spacing=spacing,
        channel_axis=channel_axis,
        normalization=normalization,
        tile=tile,
        overlap=overlap,
        device=device,
        precision=precision,
        tta=tta,
        runtime=runtime,
        out=out,
        **options,
    )
    return drive(iter_predict(image, model, run, cancel=cancel), progress)
