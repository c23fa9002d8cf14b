"""Multi-level memory for a chat model: a short-term buffer, a long-term vector store and an episodic store.

- `short_term.ShortTermBuffer`: the recent turns of each session, first in first out, bounded by a
  token budget (one token is one UTF-8 byte for a byte-level model).
- long-term: text chunks with their embeddings, searched by cosine similarity (`vector_index`:
  exact by a matrix product, or an approximate HNSW index through the `ann` extra).
- episodic: experiences (session, time, role, text, importance) recalled by the Generative Agents
  retrieval score (`episodic_retrieval`, the equation beside its one user).

Both stores live in one SQLite file (`database.MemoryDatabase`), vectors as BLOBs, so a write that
touches both is one transaction; `manager.MemoryManager` stores, recalls, forgets and counts, and
keeps the in-memory indexes in step with the tables. Embeddings come from the serving model itself
(`embedding.embed_texts`).
"""
