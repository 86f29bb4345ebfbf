"""Progress (selfsup.core.progress): tqdm on a terminal, plain lines elsewhere."""
import io

from selfsup.core.progress import PlainProgress, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_tqdm_on_a_terminal_and_plain_lines_elsewhere():
    from tqdm.auto import tqdm

    with progress_bar(total=3, file=FakeTerminal()) as bar:
        assert isinstance(bar, tqdm)
    log = io.StringIO()
    bar = progress_bar(total=4, desc="train", unit="step", file=log)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.0  # every update prints
    bar.update(1)
    bar.set_postfix(loss="1.2345")
    bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert lines[0].startswith("train: 1/4 step (25%) | ") and "ETA" in lines[0]
    assert lines[1].startswith("train: 2/4 step (50%) | loss=1.2345 | ")
    quiet = io.StringIO()
    for _ in PlainProgress(range(100), desc="features", interval=3600, file=quiet):
        pass
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]]  # just the final line
    assert quiet.getvalue().startswith("features: 100/100 it (100%)")
