"""An example flow: plain Python, nothing of flowagent imported."""

import time


def hello(name: str = "world", count: int = 3) -> dict[str, object]:
    for i in range(1, count + 1):
        print(f"hello {name} ({i}/{count})", flush=True)
        time.sleep(0.2)
    return {"greeted": name, "times": count}
