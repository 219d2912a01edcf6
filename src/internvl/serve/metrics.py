"""Server counters and latency histograms, rendered in the Prometheus text format for `GET /metrics`.

Updated only from the event-loop thread (request handlers), so no locks; gauges that belong to the engine
thread (queue depth, running requests) are read at scrape time through callbacks.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # observations per bucket (not cumulative)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return lines


class Metrics:
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.requests: Counter[int] = Counter()  # chat-completion requests by HTTP status
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0  # requests whose client went away before the answer was done
        self.latency = Histogram()  # request received -> last token
        self.ttft = Histogram()  # request received -> first token
        self.gauges = gauges or {}

    def render(self) -> str:
        p = "internvl_"
        lines = [f"# HELP {p}requests_total Chat-completion requests by HTTP status.",
                 f"# TYPE {p}requests_total counter"]
        lines += [f'{p}requests_total{{status="{code}"}} {n}' for code, n in sorted(self.requests.items())]
        for name, value, help_text in (
                ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens of admitted requests (images included)."),
                ("completion_tokens_total", self.completion_tokens, "Tokens generated."),
                ("cancelled_requests_total", self.cancelled, "Requests cancelled because the client disconnected.")):
            lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} counter", f"{p}{name} {value}"]
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} gauge", f"{p}{name} {read()}"]
        lines += self.latency.render(f"{p}request_latency_seconds", "Time from request to last token.")
        lines += self.ttft.render(f"{p}time_to_first_token_seconds", "Time from request to first token.")
        return "\n".join(lines) + "\n"
