"""In-memory copies of the stored vectors, searched by cosine similarity.

`VectorRows` keeps ids and unit vectors (and, for episodic memories, importance and last-retrieval
time) in growable arrays; exact top-k search is one matrix product. `USearchIndex` is the
approximate option for large stores: an HNSW graph (Malkov & Yashunin 2018) from the `usearch`
package (the `ann` extra), tested against exact search for recall@10. Both are rebuilt from the
database at start and updated after each committed transaction, so they hold what the table holds.
"""

import numpy as np


def _top_k(similarities: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest similarities, largest first."""
    if k >= len(similarities):
        return np.argsort(-similarities, kind="stable")
    part = np.argpartition(-similarities, k - 1)[:k]
    return part[np.argsort(-similarities[part], kind="stable")]


class VectorRows:
    """Rows of (id, unit vector, importance, last access) with O(1) append and swap-remove."""

    def __init__(self, dim: int):
        self.dim = dim
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._importance = np.empty(0, dtype=np.float32)
        self._last_access = np.empty(0, dtype=np.float64)
        self._position: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._position)

    def __contains__(self, memory_id: int) -> bool:
        return memory_id in self._position

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: len(self)]

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: len(self)]

    @property
    def importance(self) -> np.ndarray:
        return self._importance[: len(self)]

    @property
    def last_access(self) -> np.ndarray:
        return self._last_access[: len(self)]

    def add(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        importance: float | np.ndarray = 0.0,
        last_access: float | np.ndarray = 0.0,
    ) -> None:
        """Append rows; `importance` and `last_access` are scalars or one value per row."""
        n, new = len(self), len(ids)
        if n + new > len(self._ids):  # grow geometrically: appends cost O(1) amortised
            capacity = max(16, 2 * (n + new))
            self._ids = np.resize(self._ids, capacity)
            self._vectors = np.resize(self._vectors, (capacity, self.dim))
            self._importance = np.resize(self._importance, capacity)
            self._last_access = np.resize(self._last_access, capacity)
        self._ids[n : n + new] = ids
        self._vectors[n : n + new] = vectors
        self._importance[n : n + new] = importance
        self._last_access[n : n + new] = last_access
        self._position.update((int(memory_id), n + i) for i, memory_id in enumerate(ids))

    def remove(self, memory_id: int) -> None:
        """Remove a row by moving the last row into its place."""
        position = self._position.pop(memory_id)
        last = len(self)
        if position != last:
            for column in (self._ids, self._vectors, self._importance, self._last_access):
                column[position] = column[last]
            self._position[int(self._ids[position])] = position

    def vector_of(self, memory_id: int) -> np.ndarray:
        return self._vectors[self._position[memory_id]].copy()

    def touch(self, ids: list[int], when: float) -> None:
        for memory_id in ids:
            self._last_access[self._position[memory_id]] = when

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: (ids, cosine similarities), most similar first (vectors and query are unit vectors)."""
        similarities = self.vectors @ query
        best = _top_k(similarities, k)
        return self.ids[best], similarities[best]


class USearchIndex:
    """Approximate cosine top-k through usearch's HNSW index (the `ann` extra)."""

    def __init__(self, dim: int, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 256):
        try:
            from usearch.index import Index
        except ImportError as error:
            raise ImportError("the approximate index needs the 'ann' extra: uv sync --extra ann") from error
        self._index = Index(
            ndim=dim, metric="cos", dtype="f32", connectivity=connectivity,
            expansion_add=expansion_add, expansion_search=expansion_search,
        )  # fmt: skip
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add(np.asarray(ids, dtype=np.uint64), np.ascontiguousarray(vectors, dtype=np.float32))
        self._count += len(ids)

    def remove(self, memory_id: int) -> None:
        self._count -= int(self._index.remove(memory_id))  # one key: a count, typed as int or array

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: (ids, cosine similarities), most similar first."""
        if self._count == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        matches = self._index.search(np.ascontiguousarray(query, dtype=np.float32), min(k, self._count))
        return matches.keys.astype(np.int64), (1 - matches.distances).astype(np.float32)


INDEXES = {"exact": VectorRows, "usearch": USearchIndex}  # the long-term index by config name
