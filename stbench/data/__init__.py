"""The data path: catalogue, downloads, readers, images, the patch cache, preprocessing, loading."""
