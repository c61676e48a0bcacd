"""Site load management: share a site's grid connection limit among its chargers, safely.

The flow (README, "Site load management"):
    the poller that owns the site --SiteControl: every period (at once on an overload)--
      meter (gateway/sitecontrol/meter.py) or the chargers' records + base load
      --allocate (pure)--> each charger's current --> commands through the CommandRunner
      (journal, write, verify, results audited like an operator's)
      --> a SiteStatus message (messages.py) through the poller's outbox
      --> runconsumer: SiteSample history, alerts, the site page live.
The chargers' own failsafe current and timeout (failsafe.py) cover the controller, the poller and
the meter dying.
"""
