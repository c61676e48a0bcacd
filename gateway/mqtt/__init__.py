"""The edge path's MQTT side: the poller's lean MQTT client, topic names, broker config, the bridge."""
