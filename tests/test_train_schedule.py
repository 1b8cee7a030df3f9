"""The host loop's per-chunk decisions (`train.chunk_length`, `train.due_at`), without training."""

from resexp.runs.train import Due, chunk_length, due_at


def ends(total: int, log_every: int, start: int = 0) -> list[int]:
    out, step = [], start
    while step < total:
        step += chunk_length(step, total, log_every)
        out.append(step)
    return out


def test_chunks_are_log_every_steps_and_the_rest_at_the_end():
    assert ends(40, 10) == [10, 20, 30, 40]
    assert ends(45, 10) == [10, 20, 30, 40, 45]
    assert ends(45, 10, start=20) == [30, 40, 45]  # a resume goes on at the same chunk ends
    assert ends(5, 10) == [5]


def test_evaluation_and_checkpoint_at_their_multiples_and_always_at_the_end():
    plan = {end: due_at(end, total=40, eval_every=20, checkpoint_every=0) for end in ends(40, 10)}
    assert plan == {
        10: Due(evaluate=False, checkpoint=False),
        20: Due(evaluate=True, checkpoint=False),
        30: Due(evaluate=False, checkpoint=False),
        40: Due(evaluate=True, checkpoint=True),
    }
    assert due_at(30, total=45, eval_every=0, checkpoint_every=15) == Due(evaluate=False, checkpoint=True)
    assert due_at(45, total=45, eval_every=0, checkpoint_every=0) == Due(evaluate=True, checkpoint=True)


def test_an_every_that_is_no_multiple_of_log_every_acts_at_the_common_multiples():
    """eval_every 15 with chunks of 10: the chunk ends 30 and 60 (and the end), nowhere in between."""
    due = [end for end in ends(70, 10) if due_at(end, total=70, eval_every=15, checkpoint_every=0).evaluate]
    assert due == [30, 60, 70]
