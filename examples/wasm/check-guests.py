#!/usr/bin/env python3
"""Runs the guests built by scripts/build-guests.sh on wasmtime 48 (the Python embedding).

    python3 -m pip install 'wasmtime==48.*'
    python3 examples/wasm/check-guests.py [GUEST_DIR]     # default target/guests

What it shows, without building the Skiff host:
  - every component compiles on a wasmtime 48 engine and instantiates against wasmtime's own
    WASI p2 + wasi:http linker, so each import is one the host really provides;
  - job.wasm (preview 1) and job.component.wasm (wasi:cli/command) print their arguments and
    GREETING, write /data/job-output.txt when /data is preopened, and exit as asked.
The HTTP handlers cannot be called from here (only a host can create an incoming-request);
serve them with a wasi:http host to see the responses (see examples/README.md).
"""

import os
import sys
import tempfile
import time

import wasmtime
import wasmtime.component as component

WASI = "0.2.12"
failures = []


def check(cond, what):
    print(("  ok   " if cond else "  FAIL ") + what)
    if not cond:
        failures.append(what)


def wasi_config(args, data_dir, tmp):
    cfg = wasmtime.WasiConfig()
    cfg.argv = args
    cfg.env = [("GREETING", "hello from the check")]
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    cfg.stdout_file, cfg.stderr_file = out, err
    if data_dir:
        cfg.preopen_dir(data_dir, "/data")
    return cfg, out, err


def run_p1(engine, module, args, data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        store = wasmtime.Store(engine)
        cfg, out, err = wasi_config(args, data_dir, tmp)
        store.set_wasi(cfg)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, module)
        code = 0
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as e:
            code = e.code
        return code, open(out).read(), open(err).read()


def run_p2(engine, comp, args, data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        store = wasmtime.Store(engine)
        cfg, out, err = wasi_config(args, data_dir, tmp)
        store.set_wasi(cfg)
        linker = component.Linker(engine)
        linker.add_wasip2()
        instance = linker.instantiate(store, comp)
        iface = instance.get_export_index(store, f"wasi:cli/run@{WASI}")
        run = instance.get_func(store, instance.get_export_index(store, "run", iface))
        code = 0
        try:
            result = run(store)
            code = 0 if getattr(result, "tag", "ok") == "ok" else 1
        except wasmtime.ExitTrap as e:
            code = e.code
        return code, open(out).read(), open(err).read()


def check_job(name, runner, engine, artifact, full_exit_codes):
    print(f"{name}:")
    data = tempfile.mkdtemp()
    code, out, err = runner(engine, artifact, ["job", "two words", "--exit=3"], data)
    check("hello from the skiff job\n" in out, "prints its greeting line")
    check("argv[1]=two words\n" in out and "argv[2]=--exit=3\n" in out, "prints its arguments")
    check("GREETING=hello from the check\n" in out, "prints GREETING from the environment")
    check(err == "job: this line goes to stderr\n", "writes one line to stderr")
    path = os.path.join(data, "job-output.txt")
    check(os.path.exists(path) and "GREETING=hello from the check" in open(path).read(),
          "writes /data/job-output.txt into the preopened directory")
    # WASI 0.2's wasi:cli/exit carries only success or failure: the adapter maps any
    # non-zero proc_exit code to 1.
    want = 3 if full_exit_codes else 1
    check(code == want, f"--exit=3 exits with {want} (got {code})")
    code, out, _ = runner(engine, artifact, ["job"], None)
    check(code == 0, f"exits 0 by default (got {code})")
    check("no /data directory" in out, "runs without /data")


def main():
    guests = sys.argv[1] if len(sys.argv) > 1 else "target/guests"
    engine = wasmtime.Engine()

    for name, world in [
        ("hello-http-c.wasm", "http"),
        ("hello-http-py.wasm", "http"),
        ("job.component.wasm", "cli"),
    ]:
        print(f"{name}:")
        started = time.monotonic()
        comp = component.Component.from_file(engine, os.path.join(guests, name))
        check(True, f"compiles on wasmtime 48 ({time.monotonic() - started:.2f} s)")
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        linker = component.Linker(engine)
        linker.add_wasip2()
        if world == "http":
            store.set_wasi_http()
            linker.add_wasi_http()
        instance = linker.instantiate(store, comp)
        export = "wasi:http/incoming-handler" if world == "http" else "wasi:cli/run"
        check(instance.get_export_index(store, f"{export}@{WASI}") is not None,
              f"instantiates with wasmtime's WASI linker and exports {export}@{WASI}")

    module = wasmtime.Module.from_file(engine, os.path.join(guests, "job.wasm"))
    check_job("job.wasm (preview 1)", run_p1, engine, module, True)
    comp = component.Component.from_file(engine, os.path.join(guests, "job.component.wasm"))
    check_job("job.component.wasm (wasi:cli/command)", run_p2, engine, comp, False)

    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
