"""What an index version is on storage: its typed manifest and files (`version`), the
versions folder and the CURRENT pointer (`layout`), the writers' lock (`lock`), and
the docs tables that join FAISS ids to documents (`docs`)."""
