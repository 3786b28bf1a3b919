#!/bin/sh
# Lab 4, after the lab: read the capture that `qtlab up ... --capture DIR` left in DIR.
# Run from the repository's root, as your user (qtlab gave the capture to you):
#   sh labs/04-reading-the-wire.sh /tmp/qtlab-lab4
# Each command is printed before its output ("$ ..."): type them yourself to vary them.
set -eu
dir=${1:?usage: sh labs/04-reading-the-wire.sh CAPTURE_DIR}
keylog=$dir/keylog/conc.keylog
plugin=tools/wireshark/quic_tunnel.lua
tshark="tshark -n -o tls.keylog_file:$keylog -X lua_script:$plugin"
run() {  # print a command line, then run it (tshark's own warnings left out)
    printf '\n$ %s\n' "$1"
    sh -c "$1" 2>/dev/null
}

# Step 4 - WiFi's first QUIC packets without the key log: the handshake's long headers are
# readable, everything after them is "Protected Payload".
run "tshark -n -r $dir/c1/wifi.pcap -Y quic | head -6"

# Step 5 - the same capture with the key log and the drafts' dissector: the session datagrams.
# Per packet: frame number, UDP length, QUIC frame type, DATAGRAM length, Protocol Type, Packet
# Tag, and the IP lengths (outer, inner).
run "$tshark -r $dir/c1/wifi.pcap -Y qtun.session.packet_tag -T fields -e frame.number \
-e udp.length -e quic.frame_type -e quic.dg.length -e qtun.session.protocol_type \
-e qtun.session.packet_tag -e ip.len | head -8"

# Step 6 - the session's control messages on each access (QUIC stream, TLV type, length).
for access in wifi 5g; do
    run "$tshark -r $dir/c1/$access.pcap -Y qtun.control_tlv.type -T fields -e frame.number \
-e qtun.stream_id -e qtun.control_tlv.type -e qtun.control_tlv.length -e qtun.summary"
done

# Step 7 - stream mode: the HTTP request's own QUIC stream and its TLVs.
run "$tshark -r $dir/c1/wifi.pcap -Y qtun.stream_tlv.type -T fields -e frame.number \
-e qtun.stream_id -e qtun.stream_tlv.type -e qtun.stream_tlv.length -e qtun.summary"

# Step 8 - the qlogs (one per connection, named after its first Destination Connection ID):
# the frames c1 sent on each connection, counted by type.
run "ls $dir/qlog/c1"
printf '\n$ python3 -c ... %s\n' "$dir/qlog/c1/*.qlog"
python3 -c '
import collections, json, sys
for path in sys.argv[1:]:
    events = json.load(open(path))["traces"][0]["events"]
    sent = [e["data"] for e in events if e["name"] == "transport:packet_sent"]
    frames = collections.Counter(f["frame_type"] for d in sent for f in d.get("frames", []))
    print(path.rsplit("/", 1)[-1], len(sent), "packets sent;", dict(sorted(frames.items())))
' "$dir"/qlog/c1/*.qlog
