"""SW-Attn* mask of Titans MAG (Sec. 4.2): a hand-worked table."""

from src.layers.titans import sliding_window_allowed


def test_hand_worked_table():
    allowed = sliding_window_allowed(5, 5, window=2, n_persistent=1).int().tolist()
    # Every query sees position 0 (persistent) and itself and the position before it.
    assert allowed == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 0, 1, 1, 1],
        [1, 0, 0, 1, 1],
    ]


def test_queries_are_the_last_positions():
    assert sliding_window_allowed(1, 6, window=3, n_persistent=0).int().tolist() == [[0, 0, 0, 1, 1, 1]]
