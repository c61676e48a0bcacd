"""Operator commands: current limit, pause, resume; written by the poller, verified by read-back.

The flow (README, "Commands"):
    page / sendcommand / API --service.send_command--> Kafka evdash.commands (key: charge point)
      --(direct, or runbridge -> MQTT evdash/<site>/<cp>/commands)--> the poller that owns the
      charge point --journal, queue, write, settle, read back--> result
      --outbox--> Kafka evdash.command-results (or MQTT .../command-results -> runbridge)
      --> runconsumer: stored on the Command row, pushed live to the page.
"""
