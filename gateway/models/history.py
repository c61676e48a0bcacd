"""The telemetry history: one row per record (raw), and one-minute rollups kept for longer.

On PostgreSQL both tables are partitioned by time (migration 0009, gateway/history/partitions.py):
raw samples by day, rollups by month, so retention drops whole partitions. SQLite (the embedded
demo) keeps plain tables and prunes by DELETE.
"""

from django.db import models

# The values kept in the history: every telemetry value role but error_code (a vendor code that
# means nothing averaged; the status carries the fault), plus the limit the poller holds.
HISTORY_ROLES: tuple[str, ...] = (
    "power_w",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "energy_total_wh",
    "session_energy_wh",
    "temperature_c",
    "current_limit_a",
    "active_limit_a",
)


class TelemetrySample(models.Model):
    """One telemetry record of one charge point, as stored by the history consumer group.

    The key (charge point, ts, seq) makes a redelivered record a conflict, not a second row. The
    charge point has no database constraint: a foreign key check per inserted row costs ingest
    rate, and the sink joins the charge points anyway (Django still cascades a deletion).
    """

    pk = models.CompositePrimaryKey("charge_point", "ts", "seq")
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    ts = models.DateTimeField(help_text="Source timestamp of the record.")
    seq = models.BigIntegerField()
    status = models.CharField(max_length=16)
    power_w = models.FloatField(null=True)
    current_l1_a = models.FloatField(null=True)
    current_l2_a = models.FloatField(null=True)
    current_l3_a = models.FloatField(null=True)
    voltage_l1_v = models.FloatField(null=True)
    voltage_l2_v = models.FloatField(null=True)
    voltage_l3_v = models.FloatField(null=True)
    energy_total_wh = models.FloatField(null=True)
    session_energy_wh = models.FloatField(null=True)
    temperature_c = models.FloatField(null=True)
    current_limit_a = models.FloatField(null=True)
    active_limit_a = models.FloatField(null=True)

    class Meta:
        verbose_name = "telemetry sample"
        # The fleet chart reads every charge point over a time range. On PostgreSQL, migration 0009
        # makes this index a BRIN (rows arrive in time order: a few pages per partition).
        indexes = [models.Index(fields=["ts"], name="gateway_sample_ts_idx")]

    def __str__(self) -> str:
        return f"{self.charge_point_id} @ {self.ts.isoformat()} #{self.seq}"


class TelemetryRollup(models.Model):
    """One charge point over one completed minute: sample count, min/avg/max per value, last status."""

    pk = models.CompositePrimaryKey("charge_point", "minute")
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    minute = models.DateTimeField(help_text="Start of the minute.")
    samples = models.PositiveIntegerField()
    last_status = models.CharField(max_length=16)
    power_w_min = models.FloatField(null=True)
    power_w_avg = models.FloatField(null=True)
    power_w_max = models.FloatField(null=True)
    current_l1_a_min = models.FloatField(null=True)
    current_l1_a_avg = models.FloatField(null=True)
    current_l1_a_max = models.FloatField(null=True)
    current_l2_a_min = models.FloatField(null=True)
    current_l2_a_avg = models.FloatField(null=True)
    current_l2_a_max = models.FloatField(null=True)
    current_l3_a_min = models.FloatField(null=True)
    current_l3_a_avg = models.FloatField(null=True)
    current_l3_a_max = models.FloatField(null=True)
    voltage_l1_v_min = models.FloatField(null=True)
    voltage_l1_v_avg = models.FloatField(null=True)
    voltage_l1_v_max = models.FloatField(null=True)
    voltage_l2_v_min = models.FloatField(null=True)
    voltage_l2_v_avg = models.FloatField(null=True)
    voltage_l2_v_max = models.FloatField(null=True)
    voltage_l3_v_min = models.FloatField(null=True)
    voltage_l3_v_avg = models.FloatField(null=True)
    voltage_l3_v_max = models.FloatField(null=True)
    energy_total_wh_min = models.FloatField(null=True)
    energy_total_wh_avg = models.FloatField(null=True)
    energy_total_wh_max = models.FloatField(null=True)
    session_energy_wh_min = models.FloatField(null=True)
    session_energy_wh_avg = models.FloatField(null=True)
    session_energy_wh_max = models.FloatField(null=True)
    temperature_c_min = models.FloatField(null=True)
    temperature_c_avg = models.FloatField(null=True)
    temperature_c_max = models.FloatField(null=True)
    current_limit_a_min = models.FloatField(null=True)
    current_limit_a_avg = models.FloatField(null=True)
    current_limit_a_max = models.FloatField(null=True)
    active_limit_a_min = models.FloatField(null=True)
    active_limit_a_avg = models.FloatField(null=True)
    active_limit_a_max = models.FloatField(null=True)

    class Meta:
        verbose_name = "telemetry rollup"
        # The newest rolled-up minute of the fleet (where the raw tail of a chart starts).
        indexes = [models.Index(fields=["minute"], name="gateway_rollup_minute_idx")]

    def __str__(self) -> str:
        return f"{self.charge_point_id} @ {self.minute.isoformat()} ({self.samples} samples)"


class RollupBacklog(models.Model):
    """Raw samples stored out of order (an outbox replayed after an outage, a history group catching
    up) whose minutes the next roll-up must recompute, beyond its usual look-back.

    One row (name "pending") holding the oldest such sample's time: written in the transaction that
    stores the samples, removed only after the roll-up that covered it, so a consumer that dies in
    between loses nothing.
    """

    name = models.CharField(max_length=16, primary_key=True)
    since = models.DateTimeField()

    def __str__(self) -> str:
        return f"roll up again from {self.since.isoformat()}"
