"""The pair-relationship GCN of MPRD (spec §7): subgraphs with DRNL labels, the DGCNN link classifier, Reptile."""
