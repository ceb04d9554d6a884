"""MuDeep v2: leader-based multi-scale attention (Qian et al., TPAMI 2019), after naiq/MuDeep_v2."""
