"""Searching an index version: the one contract (`query`: `Query` in, `Hit`s out), the
one `Searcher`, the shards' dense and BM25 search (`shards`, `lexical`), filters, fusion,
and `ShardedIndex`, the library's facade over them."""
