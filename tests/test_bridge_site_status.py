"""runbridge forwards the site controllers' statuses, as a real process between a real Mosquitto
(passwords, ACL: the poller publishes <prefix>/<site>/site-status, the bridge reads it) and Tansu:
to the Kafka site-status topic keyed by site, payload unchanged, each once; a status on a topic that
names no site is counted and logged as malformed, like telemetry's."""

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

from gateway.kafka.topics import site_status_topic
from gateway.sitecontrol.messages import SiteStatus
from tests.bridge_harness import BridgeProcess, TelemetrySource, bridge_env, decoded, last_stats
from tests.kafka_read import read_all
from tests.mosquitto import Mosquitto, mosquitto_fixture  # noqa: F401 (the `mosquitto` fixture)
from tests.processes import wait_until_async
from tests.test_sitecontrol_messages import SHARES, site_status


async def test_site_statuses_reach_kafka_keyed_by_site_and_bad_topics_are_counted(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto
) -> None:
    env = bridge_env(
        tmp_path,
        kafka,
        mosquitto.url("bridge"),
        EVDASH_MQTT_CA_FILE=str(mosquitto.ca_file),
        EVDASH_SITE_STATUS_TOPIC=site_status_topic(),
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
    )
    bridge = BridgeProcess(env, tmp_path / "runbridge.log")
    source = TelemetrySource(mosquitto, charge_points=2)  # publishes as the poller
    depot = [site_status(0, chargers=SHARES), site_status(5), site_status(10, state="fallback", draw_source="fallback")]
    yard = [dataclasses.replace(site_status(5, site="yard"), at=depot[0].at + timedelta(seconds=2))]
    try:
        await bridge.logged("connected to MQTT broker")
        await bridge.logged("forwarding evdash/+/site-status to Kafka topic")
        source.publish_round()
        for status in [depot[0], yard[0], depot[1], depot[2]]:
            await asyncio.to_thread(source.publish_raw, f"evdash/{status.site}/site-status", status.to_json())
        # Topics the subscription matches that name no site: an empty level, the pollers' level.
        await asyncio.to_thread(source.publish_raw, "evdash//site-status", depot[0].to_json())
        await asyncio.to_thread(source.publish_raw, "evdash/pollers/site-status", depot[0].to_json())
        source.publish_round()
        await asyncio.to_thread(source.wait_all_acknowledged)
        await wait_until_async(
            lambda: last_stats(bridge.output()).get("forwarded") == "8", 30, "everything forwarded", bridge
        )
        code, _ = bridge.stop()
        output = bridge.output()
        assert code == 0, output[-3000:]
    finally:
        bridge.kill()
        source.close()

    stored = await read_all(site_status_topic())
    by_site: dict[bytes, list[bytes]] = {}
    for message in stored:  # a site's statuses on one partition, in the order published
        by_site.setdefault(message.key, []).append(message.value)
    assert by_site == {b"depot": [s.to_json() for s in depot], b"yard": [yard[0].to_json()]}
    assert [SiteStatus.from_json(value) for value in by_site[b"depot"]] == depot
    assert len({message.partition for message in stored if message.key == b"depot"}) == 1
    telemetry = decoded(await read_all(kafka["TELEMETRY_TOPIC"]))  # and no status among them
    assert sorted((r["charge_point"], r["seq"]) for r in telemetry) == [(cp, n) for cp in source.slugs for n in (1, 2)]
    stats = last_stats(output)
    assert (stats["received"], stats["site_statuses_received"], stats["malformed"]) == ("10", "4", "2")
    assert "dropped a message on 'evdash//site-status'" in output  # the first is logged, the next counted
    assert "refused our subscription" not in output
    assert "Traceback" not in output
