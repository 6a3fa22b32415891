"""What a person at a terminal sees of one ``python -m node``: a readable progress line (round,
accuracy, neighbours heard) and one line for each event worth a look (whom the peer waits for
and why, a neighbour suspected or back, a join, the merge), while the JSON-lines log goes to its
file. On a terminal the progress line is redrawn in place; elsewhere each is a line of its own."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from node.peer.observe import LogEvent


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


class ConsoleProgress:
    """Called with every log record (``JsonLog(echo=...)``); writes to ``stream``."""

    def __init__(self, *, peer_id: int, rounds: int, neighbours: dict[int, str],
                 log_path: str = "", stream: TextIO = sys.stderr):
        self.peer_id, self.rounds, self.neighbours = peer_id, rounds, neighbours
        self.log_path = log_path
        self.stream = stream
        self.redraw = stream.isatty()
        self._drawn = False  # a progress line is on screen, not yet ended

    def __call__(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == LogEvent.ROUND:
            self._progress(self.round_text(record))
            return
        text = self.event_text(record)
        if text is not None:
            self._line(text)

    def round_text(self, r: dict[str, Any]) -> str:
        heard = r.get("neighbours_heard_per_step") or [0]
        text = (f"peer {self.peer_id}  round {r.get('round')}/{self.rounds}  accuracy "
                f"{_figure(r.get('accuracy'))}")
        if r.get("val_accuracy") is not None:
            text += f"  val_accuracy {_figure(r.get('val_accuracy'))}"
        text += f"  loss {_figure(r.get('loss'))}  neighbours heard {min(heard)}"
        if r.get("suspect"):
            text += f"  (suspect: {', '.join(map(str, r['suspect']))})"
        return text

    def event_text(self, r: dict[str, Any]) -> str | None:
        """One line for an event a person should see, or None."""
        event, p = r.get("event"), f"peer {self.peer_id}"
        if event == LogEvent.UNREACHABLE:
            waits = ", ".join(f"{j}{self._where(int(j))} ({why})"
                              for j, why in r.get("reasons", {}).items())
            return (f"{p}: still waiting for neighbour(s) {waits} after {r.get('waited_s')} s "
                    f"of {r.get('timeout_s')} s")
        if event == LogEvent.SUSPECT:
            return f"{p}: neighbour {r.get('neighbour')} missed a deadline (suspect)"
        if event == LogEvent.NEIGHBOUR_BACK:
            return f"{p}: neighbour {r.get('neighbour')} is back"
        if event == LogEvent.LISTENING:
            where = f"; log in {self.log_path}" if self.log_path else ""
            return f"{p}: listening on {r.get('url')}{where}"
        if event == LogEvent.RUN_LENGTH_ADOPTED:
            self.rounds = int(r.get("rounds", self.rounds))
            return f"{p}: the network runs {self.rounds} rounds (this peer said {r.get('was')})"
        if event == LogEvent.JOINED:
            return f"{p}: joined at round {r.get('round')}, neighbours {r.get('neighbours')}"
        if event == LogEvent.CATCH_UP:
            return f"{p}: caught up from round {r.get('from_round')} to {r.get('to_round')}"
        if event == LogEvent.MERGED:
            members = len(r.get("component", []))
            what = f"merged {members} peers' models" if members > 1 else \
                "no neighbour to merge with: kept its own model"
            return f"{p}: {what}: accuracy {_figure(r.get('accuracy'))}"
        if event == LogEvent.NEVER_MIXED:
            return f"{p}: never mixed with a neighbour: {r.get('note')}"
        if event == LogEvent.REFUSED_BY:
            return f"{p}: neighbour {r.get('neighbour')} refused a message: {r.get('reason')}"
        return None

    def _where(self, j: int) -> str:
        url = self.neighbours.get(j)
        return f" at {url}" if url else ""

    def _progress(self, text: str) -> None:
        if self.redraw:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a progress line left on screen."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
