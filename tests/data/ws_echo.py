"""A websocket echo server in the standard library only, run inside a sandbox by test_ports.py:
``python3 ws_echo.py PORT``. It answers the handshake, then sends every text or binary message
back, until a close frame."""

import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def exactly(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def frame(opcode, payload):
    size = len(payload)
    if size < 126:
        head = struct.pack(">BB", 0x80 | opcode, size)
    elif size < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, size)
    return head + payload


def serve(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        key = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        try:
            while True:
                first, second = exactly(conn, 2)
                size = second & 0x7F
                if size == 126:
                    size = struct.unpack(">H", exactly(conn, 2))[0]
                elif size == 127:
                    size = struct.unpack(">Q", exactly(conn, 8))[0]
                mask = exactly(conn, 4) if second & 0x80 else b"\0\0\0\0"
                masked = exactly(conn, size)
                # Unmask four bytes at a time: as one big integer XOR, fast enough in pure Python.
                key_int = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
                payload = (int.from_bytes(masked, "big") ^ key_int).to_bytes(size, "big") if size else b""
                opcode = first & 0x0F
                if opcode == 8:
                    conn.sendall(frame(8, b""))
                    return
                conn.sendall(frame(opcode, payload))
        except EOFError:
            return


def main():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen(64)
    print("websocket echo listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
