import io

from rich.console import Console

from stbench.cli.progress import RichProgress


def test_byte_tasks_show_sizes_and_counts_show_m_of_n():
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    with RichProgress(console) as progress:
        progress("C2.jpg", 5_000_000, 12_000_000, unit="bytes")
        progress("train", 3, 10, loss=0.5)
    text = console.file.getvalue()
    assert "5.0 MB/12.0 MB" in text and "3/10" in text and "loss=0.5" in text
