"""Neural-network building blocks shared by model plugins; none of them names a model.

``encoder`` (timm backbones and their weights), ``heads`` (the projection head), ``inputs`` (centred
crop, resize, ImageNet and per-channel pixel statistics, the paper/strict input styles), ``trainer``
(the training loop: steps, history, divergence checks, best/last epoch, checkpoints) and
``retrieval`` (chunked top-K cosine search and its aggregations).
"""
