"""Images and datasets: reading any image as 8-bit RGB, COCO-format datasets, generated data."""
