"""Run `launcher bench` with every router pick logged (time, member, in-flight counts, speeds)."""
import json, sys, time
from launcher.router import balancer as b

log = open(sys.argv[1], "w")
orig = b.Balancer.pick


def pick(self, key=None, exclude=None):
    m = orig(self, key, exclude)
    rec = {
        "t": round(time.monotonic(), 3),
        "to": m.name if m else None,
        "in_flight": [x.in_flight for x in self.members],
        "rel": [round(self._speed(x), 3) for x in self.members],
        "per_slot": [round(x.tok_s_per_slot) for x in self.members],
        "speeds": [{k: round(v) for k, v in getattr(x, "speeds", {}).items()} for x in self.members],
    }
    log.write(json.dumps(rec) + "\n")
    log.flush()
    return m


b.Balancer.pick = pick
from launcher.cli import main

sys.exit(main(sys.argv[2:]))
