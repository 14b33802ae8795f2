"""Readers: images / HDF5 / NumPy / iterables -> model-shaped :class:`Batch` es.

```python
ds = open_dataset("images/", model, preprocess="efficientnet-lite", limit=500, seed=0,
                  classes="imagenet1k_classes.tsv")
for batch in ds.batches(batch_size=16, progress="calibrating"):
    engine.run(batch.feed)          # batch.labels (int64 or None), batch.ids
calib_ds, eval_ds = ds.split("calib"), ds.split("eval")   # disjoint, stable per sample id
ds.describe()                                             # JSON-able provenance
```

See :mod:`calib.datasets.dataset` for the sampling, split, batching and corrupt-file rules,
:mod:`calib.datasets.preprocess` for the exact preprocessing order and presets, and
:mod:`calib.datasets.labels` for the classes / labels file formats.
"""
from .dataset import DEFAULT_BATCH_SIZE, SPLITS, Batch, Dataset, default_workers, open_dataset, open_spec, split_of
from .labels import read_classes, read_labels
from .preprocess import PRESETS, Preprocess, parse_floats, preset_names
from .sources import ARRAY_EXTENSIONS, HDF5_EXTENSIONS, IMAGE_EXTENSIONS, DataWarning

__all__ = [
    "open_dataset", "open_spec", "Dataset", "Batch", "Preprocess", "PRESETS", "preset_names", "parse_floats",
    "split_of", "default_workers",
    "read_classes", "read_labels", "DataWarning", "IMAGE_EXTENSIONS", "ARRAY_EXTENSIONS", "HDF5_EXTENSIONS",
    "SPLITS", "DEFAULT_BATCH_SIZE",
]
