"""SAN: Semantics-Aligned Representation Learning for Person Re-identification (Jin et al., AAAI 2020).

SA-Enc (:mod:`san.model`) + SA-Dec (:mod:`san.decoder`) trained with re-ID losses on the encoder and texture
reconstruction + decoder triplet constraints on the decoder (:mod:`san.loss`); SAN-PG (:mod:`san.train_pg`)
and pseudo-texture generation (:mod:`san.generate_texture`). See ``san/README.md``.
"""
