"""Shared code for the contrastive model plugins (``heclip``, ``bleep``, ``clip``).

A library, not a plugin: it registers no hooks and no model. ``model`` holds the engine
(:class:`~stbench_contrastive.model.ContrastiveModel`, its options, the network and the ``quick``
profile), ``losses`` the three contrastive losses. Until the next release the old paths
``stbench.nn.contrastive`` and ``stbench.nn.losses`` are aliases of these modules.

Shared code for model plugins
-----------------------------
Code used by more than one model lives in one place, chosen by what it names:

* ``stbench.nn`` (the core) holds building blocks that name no model: image encoders
  (``encoder``), the projection head (``heads``), image inputs (``inputs``: centred crop, resize,
  ImageNet statistics, per-channel pixel statistics, the paper/strict input styles), the training
  loop with its history, divergence checks and checkpoints (``trainer``: mini-batches of patches or
  any fixed list of steps visited in a seeded order), and chunked top-K retrieval with its
  aggregations (``retrieval``). The flips and quarter turns of the dihedral group are
  ``stbench.data.loader.augment``.
* A library package under ``plugins/`` (this one) holds what a family of models shares and a core
  module should not name: here, the contrastive engine of HECLIP, BLEEP and CLIP.
* Each model plugin keeps only what is its own: its card, its defaults (``Options`` subclasses state
  what differs from the shared options) and the parts of its method no other model uses.
* :class:`stbench.Model` supplies what every model may share: ``report`` (progress) and
  ``fold_extra`` (records the training ``history`` in the results file).
"""
