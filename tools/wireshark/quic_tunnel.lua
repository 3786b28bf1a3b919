-- QUIC tunnel dissector for Wireshark/tshark (QUIC Tunnel Lab, tools/wireshark/quic_tunnel.lua)
--
-- Decodes, inside QUIC that Wireshark has decrypted (TLS keylog: -o tls.keylog_file:FILE), the
-- messages of the three drafts this project implements (shared/drafts/):
--   draft-piraux-intarea-quic-tunnel-00 (ALPN "qt"): tunnel-mode DATAGRAMs (an IP packet each,
--     handed to Wireshark's IP dissector); Access Report TLV (0x00) on unidirectional streams;
--   draft-piraux-intarea-quic-tunnel-session-00 (ALPN "qt-session"): the session datagram
--     header (Protocol Type, an EtherType, then Packet Tag; the packet goes to the EtherType's
--     dissector); New Session (0x01, optional QoS value), Session ID (0x02), Join Session
--     (0x03) on the control streams 2/3; a RESET_STREAM of stream 3 is a refused join (§6.1.3);
--   draft-piraux-intarea-quic-tunnel-tcp-00 (transport parameter quic_tunnel_stream_mode,
--     provisional codepoint 0x71745f73 of tunnel/protocol/quic_ext.py): TCP Connect (0x00),
--     TCP Connect OK (0x01), Error (0x02, an ICMP payload goes to the ICMP dissector), End
--     (0xff) at the start of bidirectional streams, then the TCP bytestream as data.
-- Every field is under "qtun." (tshark -G fields | grep qtun.), e.g. qtun.access_report.signal,
-- qtun.session.packet_tag, qtun.tcp_connect.port; qtun.summary is one line per message and
-- qtun.direction says who sent it. `python -m testbed.decode DIR` prints a capture with it.
--
-- How the payloads get here (Wireshark 4.0, as Debian 12 ships it):
--   * STREAM data: the QUIC dissector hands each STREAM frame's data to the dissector that the
--     "quic.proto" table holds for the connection's ALPN; we register there for "qt", "qt-00",
--     "qt-session" and "qt-session-00". It passes no stream id or offset a Lua dissector can
--     read, so we take them from the fields the QUIC dissector has just added for this STREAM
--     frame (the last quic.stream.stream_id / quic.stream.off / quic.stream.offset so far).
--   * DATAGRAM frames: Wireshark 4.0 shows their payload (quic.dg) but hands it to nobody, so a
--     post-dissector reads every quic.dg of the packet and dissects it here.
-- Install: `make install-dissector` (copies this file to ~/.local/lib/wireshark/plugins/), or
-- load it once: tshark -X lua_script:tools/wireshark/quic_tunnel.lua ...

-- Loaded twice (an installed copy and -X lua_script): the first one serves. Each script runs
-- in an environment of its own, so the mark goes into the real global table.
if rawget(_G, "qtun_dissector_loaded") then return end
rawset(_G, "qtun_dissector_loaded", true)

local qtun = Proto("qtun", "QUIC Tunnel")
local qtun_post = Proto("qtun_datagram", "QUIC Tunnel datagrams (post-dissector)")

-- Value names -----------------------------------------------------------------------------

local CONTROL_TLV = { [0x00] = "Access Report", [0x01] = "New Session", [0x02] = "Session ID",
                      [0x03] = "Join Session" }
local STREAM_TLV = { [0x00] = "TCP Connect", [0x01] = "TCP Connect OK", [0x02] = "Error",
                     [0xff] = "End" }
-- tunnel-00 §7.1.1; in this lab wifi = non-3GPP, 5g = 3GPP (tunnel/config.py ACCESS_KINDS)
local ACCESS_ID = { [1] = "3GPP", [2] = "Non-3GPP" }
local ACCESS_SIGNAL = { [1] = "Access Available", [2] = "Access Unavailable" }
local STREAM_ERROR = { [0] = "Protocol Violation", [1] = "ICMP Packet Received",
                       [2] = "Malformed TLV", [3] = "Network Failure" }            -- tcp-00 §5.1.3
local CONTROL_ERROR = { [0] = "UNKNOWN_ERROR", [1] = "UNKNOWN_SESSION_ID",
                        [2] = "CONFLICTING_STATE" }                      -- tunnel-session-00 §6.1.3
local PROTOCOL_TYPE = { [0x0800] = "IPv4", [0x86dd] = "IPv6",
                        [0x6558] = "Transparent Ethernet Bridging" }     -- tunnel-session-00 §4
local STREAM_MODE_TP = 0x71745f73 -- tunnel/protocol/quic_ext.py STREAM_MODE_TP_ID
local ALPN_MODE = { ["qt"] = "tunnel", ["qt-00"] = "tunnel", ["qt-session"] = "session",
                    ["qt-session-00"] = "session" }
local FROM_CLIENT, FROM_CONCENTRATOR = "client->concentrator", "concentrator->client"
-- The TLVs of one stream are kept until its End TLV to decode TLVs split over frames; a stream
-- whose first 64 KiB hold no End (hundreds of TLVs of at most 257 bytes) is not parsed further.
local MAX_TLV_BYTES = 65536

-- Fields ----------------------------------------------------------------------------------

local F = {
    summary = ProtoField.string("qtun.summary", "Message"),
    direction = ProtoField.string("qtun.direction", "Direction"),
    mode = ProtoField.string("qtun.mode", "Tunnel mode"),
    stream_id = ProtoField.uint64("qtun.stream_id", "Stream ID"),
    -- control TLVs (tunnel-00 §7, tunnel-session-00 §6.1) on unidirectional streams
    control_type = ProtoField.uint8("qtun.control_tlv.type", "Type", base.HEX, CONTROL_TLV),
    control_length = ProtoField.uint8("qtun.control_tlv.length", "Length"),
    access_report = ProtoField.none("qtun.access_report", "Access Report TLV"),
    access_id = ProtoField.uint8("qtun.access_report.access_id", "Access ID (AI)", base.DEC,
                                 ACCESS_ID, 0xf0),
    access_reserved = ProtoField.uint8("qtun.access_report.reserved", "Reserved (R)", base.HEX,
                                       nil, 0x0f),
    access_signal = ProtoField.uint8("qtun.access_report.signal", "Signal", base.DEC,
                                     ACCESS_SIGNAL),
    new_session = ProtoField.none("qtun.new_session", "New Session TLV"),
    qos = ProtoField.bytes("qtun.new_session.qos", "QoS Flow Indication"),
    session_id_tlv = ProtoField.none("qtun.session_id", "Session ID TLV"),
    session_id = ProtoField.bytes("qtun.session_id.session_id", "Session ID"),
    join_session = ProtoField.none("qtun.join_session", "Join Session TLV"),
    join_id = ProtoField.bytes("qtun.join_session.session_id", "Session ID"),
    control_unknown = ProtoField.none("qtun.control_tlv.unknown", "Unknown control TLV"),
    join_refused = ProtoField.uint64("qtun.join_refused", "Join refused: RESET_STREAM of "
                                     .. "control stream 3", base.DEC, CONTROL_ERROR),
    -- datagrams (tunnel-00 §4, tunnel-session-00 §4)
    datagram = ProtoField.none("qtun.datagram", "Datagram"),
    datagram_length = ProtoField.uint32("qtun.datagram.length", "Datagram length"),
    inner = ProtoField.string("qtun.datagram.inner", "Inner packet"),
    protocol_type = ProtoField.uint16("qtun.session.protocol_type", "Protocol Type", base.HEX,
                                      PROTOCOL_TYPE),
    packet_tag = ProtoField.uint16("qtun.session.packet_tag", "Packet Tag"),
    -- stream TLVs (tcp-00 §5.1) at the start of bidirectional streams
    stream_type = ProtoField.uint8("qtun.stream_tlv.type", "Type", base.HEX, STREAM_TLV),
    stream_length = ProtoField.uint8("qtun.stream_tlv.length", "Length"),
    tcp_connect = ProtoField.none("qtun.tcp_connect", "TCP Connect TLV"),
    port = ProtoField.uint16("qtun.tcp_connect.port", "Remote Peer Port"),
    address = ProtoField.ipv6("qtun.tcp_connect.address", "Remote Peer IP Address"),
    ipv4 = ProtoField.ipv4("qtun.tcp_connect.ipv4", "Remote Peer IPv4 (v4-mapped)"),
    tcp_connect_ok = ProtoField.none("qtun.tcp_connect_ok", "TCP Connect OK TLV"),
    error = ProtoField.none("qtun.error", "Error TLV"),
    error_code = ProtoField.uint16("qtun.error.code", "Error Code", base.DEC, STREAM_ERROR),
    error_payload = ProtoField.bytes("qtun.error.payload", "Error Payload"),
    end_tlv = ProtoField.none("qtun.end", "End TLV"),
    stream_unknown = ProtoField.none("qtun.stream_tlv.unknown", "Unknown stream TLV"),
    unknown_value = ProtoField.bytes("qtun.unknown_value", "Value"),
    bytestream = ProtoField.none("qtun.bytestream", "Bytestream"),
    data = ProtoField.bytes("qtun.bytestream.data", "Data"),
    data_length = ProtoField.uint32("qtun.bytestream.length", "Length"),
    data_offset = ProtoField.uint64("qtun.bytestream.offset",
                                    "Offset in the bytestream (stream offset minus the TLVs)"),
    pending = ProtoField.uint32("qtun.tlv_pending", "Bytes of an incomplete TLV"),
    retransmission = ProtoField.none("qtun.retransmission",
                                     "Retransmitted stream data (decoded where first seen)"),
    tcp_reset = ProtoField.uint64("qtun.tcp_reset", "TCP reset (RESET_STREAM/STOP_SENDING; "
                                  .. "0 = TCP_CONNECTION_RESET, tcp-00 §3)"),
    handshake = ProtoField.none("qtun.handshake", "Handshake"),
    alpn = ProtoField.string("qtun.handshake.alpn", "ALPN"),
    stream_mode_tp = ProtoField.uint64("qtun.handshake.stream_mode", "quic_tunnel_stream_mode "
                                       .. "transport parameter", base.HEX),
}
local field_list = {}
for _, f in pairs(F) do field_list[#field_list + 1] = f end
qtun.fields = field_list

local E = {
    malformed = ProtoExpert.new("qtun.malformed", "Malformed QUIC tunnel TLV",
                                expert.group.MALFORMED, expert.severity.ERROR),
    unknown = ProtoExpert.new("qtun.unknown", "Unknown QUIC tunnel TLV type or value",
                              expert.group.UNDECODED, expert.severity.WARN),
    gap = ProtoExpert.new("qtun.gap", "Stream data before a gap: its TLVs cannot be decoded",
                          expert.group.SEQUENCE, expert.severity.NOTE),
}
qtun.experts = { E.malformed, E.unknown, E.gap }

-- Fields of other dissectors this one reads -------------------------------------------------

local f_conn = Field.new("quic.connection.number")
local f_stream_id = Field.new("quic.stream.stream_id")
local f_stream_off = Field.new("quic.stream.off")
local f_stream_offset = Field.new("quic.stream.offset")
local f_stream_fin = Field.new("quic.stream.fin")
local f_dg = Field.new("quic.dg")
local f_rsts_id = Field.new("quic.rsts.stream_id")
local f_rsts_code = Field.new("quic.rsts.application_error_code")
local f_ss_id = Field.new("quic.ss.stream_id")
local f_ss_code = Field.new("quic.ss.application_error_code")
local f_hs_type = Field.new("tls.handshake.type")
local f_alpn = Field.new("tls.handshake.extensions_alpn_str")
local f_tp_type = Field.new("tls.quic.parameter.type")

-- Per-capture state (reset by init): per QUIC connection number, the concentrator's address
-- ("addr|port", from the handshake), the mode (from the ALPN) and, per stream direction, how
-- far its TLVs were parsed. Filled on the first, in-order pass; later passes read it.
local conns, streams, frames

local function reset()
    conns, streams, frames = {}, {}, {}
end
reset()
qtun.init = reset -- a new capture file, or a re-dissection from scratch

local function last(extractor)
    local all = { extractor() }
    return all[#all]
end

local function num(value) -- FieldInfo values of FT_UINT64 fields are UInt64
    if type(value) == "number" then return value end
    return value:tonumber()
end

local function conn_info(number)
    local info = conns[number]
    if info == nil then
        info = {}
        conns[number] = info
    end
    return info
end

local function endpoint(address, port)
    return tostring(address) .. "|" .. tostring(port)
end

-- Who sent this packet, from the concentrator's address the handshake showed (the client may
-- migrate, the concentrator does not); nil when the handshake is not in the capture.
local function direction(pinfo, info)
    if info.server == nil then return nil end
    if endpoint(pinfo.dst, pinfo.dst_port) == info.server then return FROM_CLIENT end
    if endpoint(pinfo.src, pinfo.src_port) == info.server then return FROM_CONCENTRATOR end
    return nil
end

local function hex(bytes)
    return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function name_of(names, value)
    return (names[value] or "Unknown") .. " (" .. value .. ")"
end

local function ipv4_text(bytes)
    return string.format("%d.%d.%d.%d", bytes:byte(1, 4))
end

local function ipv6_text(bytes) -- RFC 5952: the longest run of zero groups (>= 2) becomes ::
    local groups = {}
    for i = 1, 16, 2 do groups[#groups + 1] = bytes:byte(i) * 256 + bytes:byte(i + 1) end
    local best_at, best_len, at = 0, 1, nil
    for i = 1, 9 do
        if i <= 8 and groups[i] == 0 then
            at = at or i
        elseif at then
            if i - at > best_len then best_at, best_len = at, i - at end
            at = nil
        end
    end
    local function part(from, to)
        local out = {}
        for i = from, to do out[#out + 1] = string.format("%x", groups[i]) end
        return table.concat(out, ":")
    end
    if best_at == 0 then return part(1, 8) end
    return part(1, best_at - 1) .. "::" .. part(best_at + best_len, 8)
end

-- A one-line summary of an inner IP packet, for qtun.summary and `python -m testbed.decode`
-- (the tree shows the IP dissector's own decoding below).
local ICMP4 = { [0] = "echo reply", [3] = "destination unreachable", [8] = "echo request",
                [11] = "time exceeded" }
local ICMP6 = { [1] = "destination unreachable", [2] = "packet too big", [3] = "time exceeded",
                [128] = "echo request", [129] = "echo reply", [133] = "router solicitation",
                [134] = "router advertisement", [135] = "neighbor solicitation",
                [136] = "neighbor advertisement", [143] = "MLDv2 report" }

local function inner_summary(bytes)
    local version = math.floor((bytes:byte(1) or 0) / 16)
    local proto, src, dst, l4
    if version == 4 and #bytes >= 20 then
        proto = bytes:byte(10)
        src, dst = ipv4_text(bytes:sub(13, 16)), ipv4_text(bytes:sub(17, 20))
        l4 = bytes:sub((bytes:byte(1) % 16) * 4 + 1)
    elseif version == 6 and #bytes >= 40 then
        proto = bytes:byte(7)
        src, dst = ipv6_text(bytes:sub(9, 24)), ipv6_text(bytes:sub(25, 40))
        l4 = bytes:sub(41)
    else
        return string.format("not an IP packet (%d bytes)", #bytes)
    end
    local text = string.format("IPv%d %s -> %s", version, src, dst)
    if (proto == 1 or proto == 58) and #l4 >= 8 then
        local kind = l4:byte(1)
        local name = (proto == 1 and ICMP4 or ICMP6)[kind] or ("type " .. kind)
        text = text .. string.format(" %s %s", proto == 1 and "ICMP" or "ICMPv6", name)
        local echo = (proto == 1 and (kind == 0 or kind == 8))
                     or (proto == 58 and (kind == 128 or kind == 129))
        if echo then
            text = text .. string.format(" id=%d seq=%d", l4:byte(5) * 256 + l4:byte(6),
                                         l4:byte(7) * 256 + l4:byte(8))
        end
    elseif (proto == 6 or proto == 17) and #l4 >= 4 then
        text = text .. string.format(" %s %d -> %d", proto == 6 and "TCP" or "UDP",
                                     l4:byte(1) * 256 + l4:byte(2), l4:byte(3) * 256 + l4:byte(4))
    else
        text = text .. " protocol " .. tostring(proto)
    end
    return text
end

local function add_summary(item, text)
    item:add(F.summary, text):set_generated()
    item:set_text(text)
end

local function tlv_root(tree, tvb, field, sid)
    local item = tree:add(field, tvb())
    item:add(F.stream_id, UInt64(sid)):set_generated()
    return item
end

-- Control TLVs (unidirectional streams) ----------------------------------------------------

local CONTROL_FIELD = { [0x00] = F.access_report, [0x01] = F.new_session,
                        [0x02] = F.session_id_tlv, [0x03] = F.join_session }

local function control_tlv(tree, tvb, sid)
    local kind, length = tvb(0, 1):uint(), tvb(1, 1):uint()
    local value = length > 0 and tvb(2, length) or nil
    local item = tlv_root(tree, tvb, CONTROL_FIELD[kind] or F.control_unknown, sid)
    item:add(F.control_type, tvb(0, 1))
    item:add(F.control_length, tvb(1, 1))
    local text
    if kind == 0x00 then
        if length ~= 2 then
            item:add_proto_expert_info(E.malformed, "Access Report length must be 2")
            text = "Access Report (malformed: length " .. length .. ")"
        else
            local ai, signal = math.floor(value(0, 1):uint() / 16), value(1, 1):uint()
            item:add(F.access_id, value(0, 1))
            item:add(F.access_reserved, value(0, 1))
            item:add(F.access_signal, value(1, 1))
            if ACCESS_ID[ai] == nil or ACCESS_SIGNAL[signal] == nil then
                -- tunnel-00 §7.1.1: other AI values are invalid, the TLV MUST be discarded
                item:add_proto_expert_info(E.unknown, "unknown Access ID or Signal: discarded")
            end
            text = string.format("Access Report: access %s, %s", name_of(ACCESS_ID, ai),
                                 name_of(ACCESS_SIGNAL, signal))
        end
    elseif kind == 0x01 then
        if value then item:add(F.qos, value) end -- tunnel-session-00 §6.1.1: optional
        text = "New Session" .. (value and (" (QoS " .. hex(value:raw()) .. ")") or "")
    elseif kind == 0x02 or kind == 0x03 then
        if value then item:add(kind == 0x02 and F.session_id or F.join_id, value) end
        text = string.format("%s: %s", CONTROL_TLV[kind], value and hex(value:raw()) or "(empty)")
    else
        if value then item:add(F.unknown_value, value) end
        item:add_proto_expert_info(E.unknown, string.format("unknown control TLV type 0x%02x",
                                                            kind))
        text = string.format("unknown control TLV type 0x%02x", kind)
    end
    add_summary(item, text .. string.format(" [stream %d]", sid))
    return text
end

-- Stream TLVs (bidirectional streams) ------------------------------------------------------

local STREAM_FIELD = { [0x00] = F.tcp_connect, [0x01] = F.tcp_connect_ok, [0x02] = F.error,
                       [0xff] = F.end_tlv }

-- tcp-00 §5.1.3: "the ICMP packet received by the concentrator is copied inside the Error
-- Payload". Ours copy the IP packet, header included (tunnel/aio/stream_server.py); earlier
-- versions copied the ICMP message alone. Returns where the ICMP message starts (0-based).
local function icmp_offset(payload)
    local version = math.floor(payload(0, 1):uint() / 16)
    if version == 4 then return (payload(0, 1):uint() % 16) * 4 end
    if version == 6 then return 40 end
    return 0
end

local function icmp_payload(item, pinfo, payload)
    local version = math.floor(payload(0, 1):uint() / 16)
    if version == 4 or version == 6 then
        Dissector.get(version == 6 and "ipv6" or "ip"):call(payload:tvb(), pinfo, item)
        return
    end
    if payload:len() < 9 then return end
    local quoted = math.floor(payload(8, 1):uint() / 16)
    Dissector.get(quoted == 6 and "icmpv6" or "icmp"):call(payload:tvb(), pinfo, item)
end

local function stream_tlv(tree, pinfo, tvb, sid)
    local kind, length = tvb(0, 1):uint(), tvb(1, 1):uint()
    local value = length > 0 and tvb(2, length) or nil
    local item = tlv_root(tree, tvb, STREAM_FIELD[kind] or F.stream_unknown, sid)
    item:add(F.stream_type, tvb(0, 1))
    item:add(F.stream_length, tvb(1, 1))
    local text
    if kind == 0x00 then
        if length ~= 18 then
            item:add_proto_expert_info(E.malformed, "TCP Connect length must be 18")
            text = "TCP Connect (malformed: length " .. length .. ")"
        else
            local port, address = value(0, 2):uint(), value(2, 16)
            item:add(F.port, value(0, 2))
            item:add(F.address, address)
            local shown
            if address:raw(0, 12) == string.rep("\0", 10) .. "\255\255" then
                item:add(F.ipv4, address(12, 4)) -- tcp-00 §5.1.1: IPv4 as v4-mapped IPv6
                shown = ipv4_text(address:raw(12, 4))
            else
                shown = "[" .. ipv6_text(address:raw()) .. "]"
            end
            text = string.format("TCP Connect: %s port %d", shown, port)
        end
    elseif kind == 0x01 then
        text = "TCP Connect OK"
    elseif kind == 0x02 then
        if length < 2 then
            item:add_proto_expert_info(E.malformed, "Error TLV needs a 2-byte code")
            text = "Error (malformed)"
        else
            local code = value(0, 2):uint()
            item:add(F.error_code, value(0, 2))
            text = "Error: " .. name_of(STREAM_ERROR, code)
            if length > 2 then
                local payload = value(2, length - 2)
                local sub = item:add(F.error_payload, payload)
                local bytes = payload:raw()
                local at = #bytes >= 1 and icmp_offset(payload) or 0
                if code == 1 and #bytes >= at + 2 then
                    text = text .. string.format(", ICMP type %d code %d", bytes:byte(at + 1),
                                                 bytes:byte(at + 2))
                    icmp_payload(sub, pinfo, payload)
                end
            end
        end
    elseif kind == 0xff then
        text = "End"
    else
        -- tcp-00 §5.1: future TLVs may come before End; a receiver steps over them
        if value then item:add(F.unknown_value, value) end
        item:add_proto_expert_info(E.unknown, string.format("unknown stream TLV type 0x%02x",
                                                            kind))
        text = string.format("unknown stream TLV type 0x%02x", kind)
    end
    add_summary(item, text .. string.format(" [stream %d]", sid))
    return text
end

-- Stream data -----------------------------------------------------------------------------

-- First pass: what this STREAM frame holds. A stream's TLVs are parsed from its contiguous
-- start, so a TLV split over two frames is shown (reassembled) in the frame that completes it;
-- a bidirectional stream's bytestream starts after its End TLV (tcp-00 §5.1.4), while every
-- byte of a unidirectional stream is TLVs (tunnel-00 §7.1, tunnel-session-00 §6.1).
local function analyse(state, offset, bytes, bidi)
    local result = { tlvs = {}, data_at = nil, retransmission = false, gap = false }
    local frame_end = offset + #bytes
    if frame_end <= state.seen and #bytes > 0 then
        result.retransmission = true
        return result
    end
    if state.data_at == nil then
        if offset > #state.buf then
            result.gap = true
        elseif #state.buf > MAX_TLV_BYTES then
            result.too_long = true -- no End where TLVs could be: not a tunnel preamble
        else
            state.buf = state.buf .. bytes:sub(#state.buf - offset + 1)
            while state.data_at == nil and state.pos + 2 <= #state.buf do
                local length = state.buf:byte(state.pos + 2)
                if state.pos + 2 + length > #state.buf then break end
                local tlv = { at = state.pos,
                              bytes = state.buf:sub(state.pos + 1, state.pos + 2 + length) }
                result.tlvs[#result.tlvs + 1] = tlv
                state.pos = state.pos + 2 + length
                if bidi and tlv.bytes:byte(1) == 0xff then
                    state.data_at = state.pos
                    state.buf = "" -- the TLVs are done: keep no bytestream
                end
            end
        end
    end
    if state.data_at == nil and not result.gap and #state.buf > state.pos then
        result.pending = #state.buf - state.pos -- the start of a TLV a later frame completes
    end
    if state.data_at ~= nil and state.data_at < frame_end then
        result.data_at = math.max(state.data_at, offset)
        result.data_offset = result.data_at - state.data_at
    end
    state.seen = math.max(state.seen, frame_end)
    return result
end

function qtun.dissector(tvb, pinfo, tree)
    local conn, sid_field = last(f_conn), last(f_stream_id)
    if conn == nil or sid_field == nil then return 0 end
    conn = conn.value
    local sid = num(sid_field.value)
    local offset = 0
    if last(f_stream_off).value then offset = num(last(f_stream_offset).value) end
    local info = conn_info(conn)
    local dir = direction(pinfo, info)
    local bidi = sid % 4 < 2 -- RFC 9000 §2.1: bit 0x2 of a stream id marks unidirectional
    if dir == nil and not bidi then
        dir = (sid % 2 == 0) and FROM_CLIENT or FROM_CONCENTRATOR -- who opened it sends on it
    end
    local key = string.format("%d/%d/%s", conn, sid, dir or endpoint(pinfo.src, pinfo.src_port))
    local frame_key = string.format("%d/%s/%d", pinfo.number, key, offset)
    local result = frames[frame_key]
    if result == nil then
        local state = streams[key]
        if state == nil then
            state = { buf = "", pos = 0, seen = 0, data_at = nil }
            streams[key] = state
        end
        result = analyse(state, offset, tvb:raw(), bidi)
        frames[frame_key] = result
    end

    local root = tree:add(qtun, tvb(), string.format("QUIC Tunnel, stream %d", sid))
    if dir then root:add(F.direction, dir):set_generated() end
    if info.mode then root:add(F.mode, info.mode):set_generated() end
    root:add(F.stream_id, UInt64(sid)):set_generated()
    local texts = {}
    for _, tlv in ipairs(result.tlvs) do
        local tlv_tvb
        if tlv.at >= offset then
            tlv_tvb = tvb(tlv.at - offset, #tlv.bytes):tvb()
        else
            tlv_tvb = ByteArray.new(tlv.bytes, true):tvb("Reassembled QUIC tunnel TLV")
        end
        texts[#texts + 1] = bidi and stream_tlv(root, pinfo, tlv_tvb, sid)
                            or control_tlv(root, tlv_tvb, sid)
    end
    if result.retransmission then
        root:add(F.retransmission, tvb())
        texts[#texts + 1] = "retransmitted data"
    elseif result.gap then
        root:add_proto_expert_info(E.gap)
    elseif result.too_long then
        root:add_proto_expert_info(E.malformed, string.format("no End TLV in the first %d bytes "
                                                              .. "of the stream", MAX_TLV_BYTES))
    end
    if result.pending then
        local item = root:add(F.pending, result.pending):set_generated()
        local text = string.format("%d bytes of a TLV, decoded in the frame that completes it",
                                   result.pending)
        add_summary(item, text .. string.format(" [stream %d]", sid))
        texts[#texts + 1] = text
    end
    if result.data_at ~= nil then
        -- a FIN alone comes as a STREAM frame without data: an empty range of the frame
        local data = tvb(result.data_at - offset, tvb:len() - (result.data_at - offset))
        local item = root:add(F.bytestream, data)
        item:add(F.stream_id, UInt64(sid)):set_generated()
        if data:len() > 0 then item:add(F.data, data) end
        item:add(F.data_length, data:len()):set_generated()
        item:add(F.data_offset, UInt64(result.data_offset)):set_generated()
        local fin = last(f_stream_fin).value
        local text
        if data:len() == 0 then
            text = string.format("bytestream: FIN at offset %d", result.data_offset)
        else
            text = string.format("bytestream: %d bytes at offset %d%s", data:len(),
                                 result.data_offset, fin and " + FIN" or "")
        end
        add_summary(item, text .. string.format(" [stream %d]", sid))
        texts[#texts + 1] = text
    end
    if #texts > 0 then
        pinfo.cols.info:append(string.format(" [QT %d: %s]", sid, table.concat(texts, ", ")))
    end
    return tvb:len()
end

for alpn, _ in pairs(ALPN_MODE) do
    DissectorTable.get("quic.proto"):add(alpn, qtun)
end

-- Post-dissector: handshake facts, DATAGRAM frames, stream resets --------------------------

local function learn_handshake(pinfo, info)
    local alpns = { f_alpn() }
    for _, hs in ipairs({ f_hs_type() }) do
        local kind = hs.value
        if kind == 1 then           -- ClientHello: sent to the concentrator
            info.server = endpoint(pinfo.dst, pinfo.dst_port)
        elseif kind == 2 then       -- ServerHello: sent by it
            info.server = endpoint(pinfo.src, pinfo.src_port)
        end
        if kind == 8 and #alpns > 0 then -- EncryptedExtensions: the ALPN it selected
            info.alpn = alpns[#alpns].value
            info.mode = ALPN_MODE[info.alpn]
        end
    end
    if info.alpn == nil and #alpns > 0 and info.offered == nil then
        info.offered = ALPN_MODE[alpns[1].value] -- the ClientHello's, until EE says
    end
end

-- The handshake messages that choose the tunnel's modes: the ALPN (tunnel-00 §5,
-- tunnel-session-00 §5) and the quic_tunnel_stream_mode transport parameter (tcp-00 §4).
local HANDSHAKE = { [1] = "ClientHello", [8] = "EncryptedExtensions" }

local function handshake(tree, dir)
    local alpns, has_tp, tp_field, tunnel = {}, false, nil, false
    for _, alpn in ipairs({ f_alpn() }) do
        alpns[#alpns + 1] = alpn.value
        tunnel = tunnel or ALPN_MODE[alpn.value] ~= nil
    end
    if not tunnel then return end -- another application's handshake
    for _, tp in ipairs({ f_tp_type() }) do
        if num(tp.value) == STREAM_MODE_TP then has_tp, tp_field = true, tp end
    end
    for _, hs in ipairs({ f_hs_type() }) do
        local name = HANDSHAKE[hs.value]
        if name ~= nil and #alpns > 0 then
            local root = tree:add(qtun, hs.range, "QUIC Tunnel")
            if dir then root:add(F.direction, dir):set_generated() end
            local item = root:add(F.handshake, hs.range)
            for _, alpn in ipairs(alpns) do item:add(F.alpn, alpn):set_generated() end
            if tp_field then item:add(F.stream_mode_tp, tp_field.range, tp_field.value) end
            local chosen = hs.value == 8 and ALPN_MODE[alpns[#alpns]]
            local text = string.format("%s: ALPN %s%s, %s", name, table.concat(alpns, ","),
                                       chosen and (" (" .. chosen .. " mode)") or "",
                                       has_tp and "quic_tunnel_stream_mode (0x71745f73)"
                                       or "no quic_tunnel_stream_mode")
            add_summary(item, text)
        end
    end
end

-- Returns the Info column tag of this datagram.
local function dissect_datagram(tree, pinfo, range, mode, dir)
    local bytes = range:raw()
    local dg_tvb = range:tvb()
    local guessed = ""
    if mode == nil then
        -- no handshake in the capture: an IP packet starts with version 4 or 6, a session
        -- header with an EtherType (0x08.., 0x86.., 0x65..)
        local first = math.floor((bytes:byte(1) or 0) / 16)
        mode = (first == 4 or first == 6) and "tunnel" or "session"
        guessed = " (guessed: no handshake in the capture)"
    end
    local root = tree:add(qtun, range, "QUIC Tunnel")
    if dir then root:add(F.direction, dir):set_generated() end
    root:add(F.mode, mode .. guessed):set_generated()
    local item = root:add(F.datagram, range):set_text(mode == "session" and "Session datagram"
                                                       or "Tunnel datagram")
    item:add(F.datagram_length, #bytes):set_generated()
    local inner, inner_tvb, ptype, text, tag
    if mode == "session" then
        if #bytes < 4 then
            item:add_proto_expert_info(E.malformed, "session datagram shorter than its header")
            add_summary(item, "session datagram (malformed: shorter than 4 bytes)")
            return "QT malformed"
        end
        ptype, tag = dg_tvb(0, 2):uint(), dg_tvb(2, 2):uint()
        item:add(F.protocol_type, dg_tvb(0, 2))
        item:add(F.packet_tag, dg_tvb(2, 2))
        inner = bytes:sub(5)
        if #inner > 0 then inner_tvb = dg_tvb(4):tvb() end
        text = string.format("session datagram: Protocol Type 0x%04x, Packet Tag %d: ", ptype, tag)
    else
        inner, inner_tvb = bytes, dg_tvb
        text = "tunnel datagram: "
    end
    local inner_text
    if inner == "" then
        inner_text = "empty"
    elseif ptype == nil or ptype == 0x0800 or ptype == 0x86dd then
        inner_text = inner_summary(inner)
    else -- e.g. an Ethernet frame (0x6558): the EtherType's dissector shows it
        inner_text = string.format("%s, %d bytes", PROTOCOL_TYPE[ptype] or "packet", #inner)
    end
    item:add(F.inner, inner_text):set_generated()
    add_summary(item, text .. inner_text)
    if inner_tvb then
        if ptype ~= nil then
            DissectorTable.get("ethertype"):try(ptype, inner_tvb, pinfo, tree)
        else
            local version = math.floor(inner:byte(1) / 16)
            Dissector.get(version == 6 and "ipv6" or "ip"):call(inner_tvb, pinfo, tree)
        end
    end
    return tag and string.format("QT tag %d", tag) or "QT"
end

local function stream_resets(tree, mode, dir)
    local texts = {}
    local kinds = {
        { ids = { f_rsts_id() }, codes = { f_rsts_code() }, what = "RESET_STREAM" },
        { ids = { f_ss_id() }, codes = { f_ss_code() }, what = "STOP_SENDING" },
    }
    for _, kind in ipairs(kinds) do
        for i, id_field in ipairs(kind.ids) do
            local sid = num(id_field.value)
            local code_field = kind.codes[i]
            local code = code_field and code_field.value or UInt64(0)
            local code_range = code_field and code_field.range or id_field.range
            local item, text
            if mode == "session" and sid == 3 and kind.what == "RESET_STREAM" then
                -- tunnel-session-00 §6.1.3: the concentrator refuses a join this way
                item = tree:add(qtun, id_field.range, "QUIC Tunnel")
                item = item:add(F.join_refused, code_range, code)
                text = "Join refused: RESET_STREAM of control stream 3, "
                       .. name_of(CONTROL_ERROR, num(code))
            elseif sid % 4 < 2 then
                -- tcp-00 §3: a TCP RST maps to STOP_SENDING + RESET_STREAM, code 0
                item = tree:add(qtun, id_field.range, "QUIC Tunnel")
                item = item:add(F.tcp_reset, code_range, code)
                text = string.format("TCP reset: %s code %d%s", kind.what, num(code),
                                     num(code) == 0 and " (TCP_CONNECTION_RESET)" or "")
            end
            if item then
                if dir then item:add(F.direction, dir):set_generated() end
                item:add(F.stream_id, UInt64(sid)):set_generated()
                add_summary(item, text .. string.format(" [stream %d]", sid))
                texts[#texts + 1] = string.format("QT %d: %s", sid, text)
            end
        end
    end
    return texts
end

function qtun_post.dissector(tvb, pinfo, tree)
    local conn = last(f_conn)
    if conn == nil then return end
    local info = conn_info(conn.value)
    if not pinfo.visited then learn_handshake(pinfo, info) end
    if info.alpn ~= nil and info.mode == nil then return end -- another application's QUIC
    local mode = info.mode or info.offered
    local dir = direction(pinfo, info)
    handshake(tree, dir)
    local tags = {}
    for _, dg in ipairs({ f_dg() }) do
        tags[#tags + 1] = dissect_datagram(tree, pinfo, dg.range, mode, dir)
    end
    if #tags > 0 then
        pinfo.cols.info:prepend("[" .. table.concat(tags, ", ") .. "] ")
    end
    local resets = stream_resets(tree, mode, dir)
    if #resets > 0 then
        pinfo.cols.info:append(" [" .. table.concat(resets, ", ") .. "]")
    end
end

register_postdissector(qtun_post, true)
