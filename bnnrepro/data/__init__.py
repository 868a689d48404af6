"""Datasets: verified download (download.py), the official formats (sources.py), class-folder datasets
(folders.py), prepared uint8 tensors (prepared.py) and in-memory batches (batches.py).

A prepared dataset is a folder holding DATA_FILE, or SKIP_FILE when the profile leaves it out. The two names
live here, without torch, so that a stage that only records a skip starts in a fraction of a second.
"""

DATA_FILE = "data.safetensors"
SKIP_FILE = "skipped.json"
