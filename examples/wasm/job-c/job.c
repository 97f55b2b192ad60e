/*
 * A small wasi:cli job for Skiff, in C (wasi-libc, WASI preview 1).
 *
 * Built twice by scripts/build-guests.sh:
 *   job.wasm            a preview-1 core module (`_start`)
 *   job.component.wasm  the same code as a preview-2 `wasi:cli/command` component
 *                       (wrapped with the wasmtime 48.0.8 command adapter)
 *
 * What it does, so tests can check every path of the host:
 *   - prints a greeting, its arguments and the GREETING variable to stdout;
 *   - prints one line to stderr;
 *   - when a directory is preopened at /data, writes /data/job-output.txt;
 *   - exits with the code given by --exit=N (default 0).
 * Extra switches for resource tests:
 *   --sleep=MS   sleep MS milliseconds before exiting (a long-running job)
 *   --alloc=MiB  allocate and touch MiB mebibytes (hits a memory limit)
 *   --spin       loop forever without yielding (hits a CPU / time limit)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Keeps --alloc's blocks reachable. */
static void *volatile alloc_root;

static long arg_value(const char *arg, const char *name) {
  size_t n = strlen(name);
  if (strncmp(arg, name, n) != 0 || arg[n] != '=')
    return -1;
  char *end = NULL;
  long v = strtol(arg + n + 1, &end, 10);
  if (end == arg + n + 1 || *end != '\0' || v < 0) {
    fprintf(stderr, "job: bad value in %s\n", arg);
    exit(2);
  }
  return v;
}

static void write_data_file(const char *greeting, int argc) {
  const char *path = "/data/job-output.txt";
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    /* No preopen covers /data: ENOENT or ENOTCAPABLE depending on the host. */
    printf("no /data directory (%s): nothing written\n", strerror(errno));
    return;
  }
  fprintf(f, "written by the skiff example job\nGREETING=%s\nargc=%d\n", greeting, argc);
  if (fclose(f) != 0) {
    fprintf(stderr, "job: cannot write %s: %s\n", path, strerror(errno));
    exit(3);
  }
  printf("wrote %s\n", path);
}

int main(int argc, char **argv) {
  long exit_code = 0, sleep_ms = 0, alloc_mib = 0;
  int spin = 0;
  for (int i = 1; i < argc; i++) {
    long v;
    if ((v = arg_value(argv[i], "--exit")) >= 0)
      exit_code = v;
    else if ((v = arg_value(argv[i], "--sleep")) >= 0)
      sleep_ms = v;
    else if ((v = arg_value(argv[i], "--alloc")) >= 0)
      alloc_mib = v;
    else if (strcmp(argv[i], "--spin") == 0)
      spin = 1;
  }

  const char *greeting = getenv("GREETING");
  if (greeting == NULL)
    greeting = "(unset)";

  printf("hello from the skiff job\n");
  printf("argc=%d\n", argc);
  for (int i = 0; i < argc; i++)
    printf("argv[%d]=%s\n", i, argv[i]);
  printf("GREETING=%s\n", greeting);
  fflush(stdout);
  fprintf(stderr, "job: this line goes to stderr\n");

  write_data_file(greeting, argc);

  if (alloc_mib > 0) {
    for (long i = 0; i < alloc_mib; i++) {
      char *p = malloc(1 << 20);
      if (p == NULL) {
        fprintf(stderr, "job: allocation failed after %ld MiB\n", i);
        return 4;
      }
      memset(p, 1, 1 << 20);
      /* Chain the blocks from a volatile root, so the compiler cannot drop them. */
      *(void **)p = alloc_root;
      alloc_root = p;
    }
    printf("allocated %ld MiB\n", alloc_mib);
  }
  if (sleep_ms > 0) {
    struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    printf("slept %ld ms\n", sleep_ms);
  }
  if (spin) {
    printf("spinning forever\n");
    fflush(stdout);
    volatile unsigned long n = 0;
    for (;;)
      n++;
  }

  printf("exiting with %ld\n", exit_code);
  return (int)(exit_code & 0xff);
}
