-- `crossway mappings replay --since T` reads stored inbound messages by arrival time.
CREATE INDEX inbound_messages_received ON inbound_messages (received_at);
