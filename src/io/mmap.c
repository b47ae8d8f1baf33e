/*
 * mmap.c — read-only whole-file mappings.
 *
 * Checkpoints are mapped PROT_READ / MAP_PRIVATE so the kernel shares the
 * pages between processes and weights need no copy. An empty file is a
 * valid mapping with data == NULL and size == 0 (mmap rejects length 0).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../error.h"
#include "tensors.h"

loupe_status lp_map_file(const char *path, lp_mapping *out) {
    memset(out, 0, sizeof *out);
    if (!path) return lp_fail(LOUPE_ERR_ARG, "lp_map_file: NULL path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lp_fail(LOUPE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lp_fail(LOUPE_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lp_fail(LOUPE_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return lp_fail(LOUPE_ERR_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t)st.st_size;
    const uint8_t *data = NULL;
    if (size > 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return lp_fail(LOUPE_ERR_IO, "%s: cannot mmap %zu bytes: %s", path, size,
                           strerror(e));
        }
        /* Ask for 2 MiB page-cache folios where the file is read from disk
         * (a no-op where it is cached already or the kernel cannot): each
         * maps with one TLB entry, and decode streams every weight page. */
        if (size >= ((size_t)2 << 20)) madvise(p, size, MADV_HUGEPAGE);
        data = p;
    }
    close(fd); /* the mapping stays valid without the descriptor */
    out->path = strdup(path);
    if (!out->path) {
        if (data) munmap((void *)data, size);
        return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    out->data = data;
    out->size = size;
    return LOUPE_OK;
}

void lp_unmap_file(lp_mapping *m) {
    if (!m) return;
    if (m->data && m->size) munmap((void *)m->data, m->size);
    free(m->path);
    memset(m, 0, sizeof *m);
}
