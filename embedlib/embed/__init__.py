"""The embed job: a corpus read in deterministic splits (`corpus/`), rows made documents
(`documents`, `chunking`), encoded on Ray actors or in this process (`pool`, `split`)
and committed exactly once per split into an embedding set (`job`)."""
