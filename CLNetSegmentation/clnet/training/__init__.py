"""Training: stage-1 training of the general encoder, continual decoders, pruning, distributed runs.

The pieces are split by job: :mod:`.datasets` (reading and caching labelled scans),
:mod:`.transforms` (patch sampling and augmentation), :mod:`.losses` (partial-label Dice + CE),
:mod:`.ema`, :mod:`.trainer` (the loop), :mod:`.add_decoder`, :mod:`.prune`, :mod:`.distributed`
and :mod:`.cli` (the ``clnet train``, ``clnet add-decoder`` and ``clnet prune`` commands).
See ``docs/training.md``.
"""
