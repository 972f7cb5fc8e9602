"""Building an index version on Ray: one module per phase (`plan`, `train`, `add`,
`merge`, `lexical`, `tune`), driven by `driver`."""
