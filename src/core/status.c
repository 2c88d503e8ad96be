/* status.c: status names, error formatting, invariant failures. */
#include "streamtune/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *st_status_str(enum st_status s) {
    switch (s) {
    case ST_OK: return "ok";
    case ST_ERR_IO: return "I/O error";
    case ST_ERR_FORMAT: return "format error";
    case ST_ERR_NOMEM: return "out of memory";
    case ST_ERR_NET: return "network error";
    case ST_ERR_SHAPE: return "shape error";
    case ST_ERR_UNSUPPORTED: return "unsupported";
    case ST_ERR_ARG: return "bad argument";
    }
    return "unknown error";
}

enum st_status st_errorf(struct st_error *err, enum st_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

enum st_status st_error_prefix(struct st_error *err, const char *fmt, ...) {
    if (!err) return ST_OK;
    char prefix[ST_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[ST_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s%s", prefix, old);
    return err->code;
}

void st_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "streamtune: internal error: assertion `%s` failed at %s:%d\n", expr, file,
            line);
    abort();
}
