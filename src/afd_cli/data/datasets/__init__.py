"""The datasets: one module per dataset, each building a ``DatasetSpec`` and registering it
with ``registry.dataset(spec)``. Adding a dataset: write ``datasets/<name>.py`` (source,
converter, loader, options) and ``conf/dataset/<name>.yaml``; nothing else lists it.
"""
