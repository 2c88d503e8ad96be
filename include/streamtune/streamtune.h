/* streamtune.h: the whole public API. */
#ifndef STREAMTUNE_H
#define STREAMTUNE_H
#include "streamtune/config.h"
#include "streamtune/core.h"
#include "streamtune/formats.h"
#include "streamtune/kernels.h"
#include "streamtune/model.h"

#define STREAMTUNE_VERSION "0.1.0"
#endif
