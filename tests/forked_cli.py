"""`neuroformer` without the interpreter's start: a server imports torch and the library once, and
runs each command in a process forked from it (its own working directory, environment, standard
streams and exit status), so a command costs its work and not ~3 s of imports.

    python forked_cli.py serve SOCKET       # the server; a command runs as
    python forked_cli.py SOCKET ARGS...     # `neuroformer ARGS...` (imports nothing heavy)
"""
import json
import os
import socket
import sys

PRELOAD = ("neuroformer.cli", "neuroformer.demo", "neuroformer.scoring", "neuroformer.decoding",
           "neuroformer.autoconfig", "neuroformer.data.importers", "pynwb")


def serve(path):
    """Answer each connection with the exit status of `neuroformer ARGS` run in a fork."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        pid = os.fork()
        if pid == 0:
            server.close()
            _child(json.loads(message), fds)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        conn.send(str(os.waitstatus_to_exitcode(status)).encode())
        conn.close()


def _child(request, fds):
    """Become the command: its directory, environment and streams; exit with its status."""
    from neuroformer.cli import main

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = [sys.modules["neuroformer.cli"].__file__, *request["args"]]       # as `python -m neuroformer.cli`
    code = 1
    try:
        code = main(request["args"])
    except SystemExit as exit:              # argparse's usage errors and --help, as the interpreter ends them
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except BaseException:                   # a traceback, as the interpreter prints it
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(path, args):
    """Run `neuroformer ARGS` in the server at `path` with this process's directory, environment
    and standard streams; exit with its status."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.connect(path)
    request = {"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
    sys.exit(int(client.recv(16) or 1))


if __name__ == "__main__":
    serve(sys.argv[2]) if sys.argv[1] == "serve" else run(sys.argv[1], sys.argv[2:])
