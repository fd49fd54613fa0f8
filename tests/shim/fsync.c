/*
 * A test shim for tests/storage.rs, loaded into the worker with LD_PRELOAD (never part of
 * the worker): it wraps fsync and fdatasync, and for the database named by FSYNC_SHIM_DB
 * (its full path, symlinks resolved) and that database's -wal file
 *
 * - appends "<db|wal> <CLOCK_REALTIME ns> <ok|error|eio|stall>" to FSYNC_SHIM_LOG for each
 *   sync, so a test can count and order them;
 * - once FSYNC_SHIM_ARM names a file that exists, injects FSYNC_SHIM_FAULT into the next
 *   sync of the -wal file, once: "eio" fails it with EIO without syncing (what Linux reports
 *   once when writeback of dirty pages was lost), "stall:MS" sleeps MS milliseconds first
 *   (a storage stall).
 *
 * Which file a descriptor is comes from /proc/self/fd. Built by the test with cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fired;

/* "db", "wal", or NULL for any other file. */
static const char *kind_of(int fd) {
    const char *db = getenv("FSYNC_SHIM_DB");
    char link[64];
    char target[PATH_MAX];
    ssize_t n;
    size_t len;

    if (db == NULL) {
        return NULL;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    if (n < 0) {
        return NULL;
    }
    target[n] = '\0';
    len = strlen(db);
    if (strncmp(target, db, len) != 0) {
        return NULL;
    }
    if (target[len] == '\0') {
        return "db";
    }
    if (strcmp(target + len, "-wal") == 0) {
        return "wal";
    }
    return NULL;
}

static void note(const char *kind, const char *what) {
    const char *log = getenv("FSYNC_SHIM_LOG");
    struct timespec now;
    char line[128];
    int len;
    int fd;

    if (log == NULL) {
        return;
    }
    clock_gettime(CLOCK_REALTIME, &now);
    len = snprintf(line, sizeof line, "%s %lld %s\n", kind,
                   (long long)now.tv_sec * 1000000000LL + now.tv_nsec, what);
    fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (write(fd, line, (size_t)len) < 0) {
            /* Nothing to do: the test will miss this line and say so. */
        }
        close(fd);
    }
}

/* True once: for the first sync after the arming file appeared. */
static int armed(void) {
    const char *arm = getenv("FSYNC_SHIM_ARM");
    return arm != NULL && access(arm, F_OK) == 0 &&
           __atomic_exchange_n(&fired, 1, __ATOMIC_SEQ_CST) == 0;
}

static int sync_file(const char *name, int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    const char *kind;
    int saved = errno;
    int rc;

    kind = kind_of(fd);
    if (kind != NULL && strcmp(kind, "wal") == 0 && armed()) {
        const char *fault = getenv("FSYNC_SHIM_FAULT");
        if (fault != NULL && strcmp(fault, "eio") == 0) {
            note(kind, "eio");
            errno = EIO;
            return -1;
        }
        if (fault != NULL && strncmp(fault, "stall:", 6) == 0) {
            long ms = atol(fault + 6);
            struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
            note(kind, "stall");
            while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
            }
        }
    }
    errno = saved;
    rc = real(fd);
    if (kind != NULL) {
        int e = errno;
        note(kind, rc == 0 ? "ok" : "error");
        errno = e;
    }
    return rc;
}

int fsync(int fd) {
    return sync_file("fsync", fd);
}

int fdatasync(int fd) {
    return sync_file("fdatasync", fd);
}
