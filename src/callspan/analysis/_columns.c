/* Reordering column sets for the analyzer's spill files (optional C extension).
 *
 * sort_columns(columns, key) -> list of arrays: every column (an array.array) reordered by a
 * stable sort on ``key`` (any buffer of integers as long as the columns: an array or bytes).
 * ``callspan.analysis.spill.sort_columns_py`` is the reference it must equal; in Python the
 * gathers alone cost ~100 ns per entry and column, here a few.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t key;
    Py_ssize_t index;
} Entry;

/* The key at i as an unsigned value in the same order as the signed/unsigned original. */
static int
read_keys(const Py_buffer *view, Entry *out, Py_ssize_t n)
{
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '@' || *fmt == '=' || *fmt == '<' || *fmt == '>' || *fmt == '!') fmt++;
    const char code = fmt[0];
    const char *p = (const char *)view->buf;
    const uint64_t flip = (uint64_t)1 << 63;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t k;
        switch (code) {
        case 'b': k = (uint64_t)(int64_t)((const signed char *)p)[i] ^ flip; break;
        case 'B': case 'c': k = ((const unsigned char *)p)[i]; break;
        case 'h': k = (uint64_t)(int64_t)((const short *)p)[i] ^ flip; break;
        case 'H': k = ((const unsigned short *)p)[i]; break;
        case 'i': k = (uint64_t)(int64_t)((const int *)p)[i] ^ flip; break;
        case 'I': k = ((const unsigned int *)p)[i]; break;
        case 'l': k = (uint64_t)(int64_t)((const long *)p)[i] ^ flip; break;
        case 'L': k = ((const unsigned long *)p)[i]; break;
        case 'q': k = (uint64_t)((const long long *)p)[i] ^ flip; break;
        case 'Q': k = ((const unsigned long long *)p)[i]; break;
        default:
            PyErr_Format(PyExc_TypeError, "sort_columns: key of type code %s is not an integer", fmt);
            return -1;
        }
        out[i].key = k;
        out[i].index = i;
    }
    return 0;
}

static inline int
before(const Entry *a, const Entry *b)
{
    return a->key < b->key || (a->key == b->key && a->index < b->index);
}

/* Stable merge sort of a[lo, hi) using tmp; halves already in order are not merged (input
 * spilled in arrival order is nearly sorted by start time). */
static void
merge_sort(Entry *a, Entry *tmp, Py_ssize_t lo, Py_ssize_t hi)
{
    if (hi - lo <= 24) {
        for (Py_ssize_t i = lo + 1; i < hi; i++) {
            Entry e = a[i];
            Py_ssize_t j = i;
            while (j > lo && before(&e, &a[j - 1])) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = e;
        }
        return;
    }
    Py_ssize_t mid = lo + (hi - lo) / 2;
    merge_sort(a, tmp, lo, mid);
    merge_sort(a, tmp, mid, hi);
    if (!before(&a[mid], &a[mid - 1])) return;
    memcpy(tmp + lo, a + lo, (size_t)(hi - lo) * sizeof(Entry));
    Py_ssize_t i = lo, j = mid, k = lo;
    while (i < mid && j < hi) a[k++] = before(&tmp[j], &tmp[i]) ? tmp[j++] : tmp[i++];
    while (i < mid) a[k++] = tmp[i++];
    while (j < hi) a[k++] = tmp[j++];
}

static PyObject *
gather(PyObject *column, const Entry *order, Py_ssize_t n)
{
    PyObject *typecode = PyObject_GetAttrString(column, "typecode");
    if (typecode == NULL) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(column, &view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        Py_DECREF(typecode);
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *data = NULL;
    const Py_ssize_t size = view.itemsize;
    if (size <= 0 || view.len != n * size) {
        PyErr_SetString(PyExc_ValueError, "sort_columns: every column must be as long as the key");
        goto done;
    }
    data = PyBytes_FromStringAndSize(NULL, view.len);
    if (data == NULL) goto done;
    char *out = PyBytes_AS_STRING(data);
    const char *in = (const char *)view.buf;
    switch (size) {
    case 8:
        for (Py_ssize_t i = 0; i < n; i++) memcpy(out + 8 * i, in + 8 * order[i].index, 8);
        break;
    case 4:
        for (Py_ssize_t i = 0; i < n; i++) memcpy(out + 4 * i, in + 4 * order[i].index, 4);
        break;
    case 1:
        for (Py_ssize_t i = 0; i < n; i++) out[i] = in[order[i].index];
        break;
    default:
        for (Py_ssize_t i = 0; i < n; i++) memcpy(out + size * i, in + size * order[i].index, (size_t)size);
    }
    result = PyObject_CallFunctionObjArgs((PyObject *)Py_TYPE(column), typecode, data, NULL);
done:
    Py_XDECREF(data);
    PyBuffer_Release(&view);
    Py_DECREF(typecode);
    return result;
}

static PyObject *
sort_columns(PyObject *self, PyObject *args)
{
    PyObject *columns, *key;
    if (!PyArg_ParseTuple(args, "OO:sort_columns", &columns, &key)) return NULL;
    PyObject *seq = PySequence_Fast(columns, "sort_columns: columns must be a sequence of arrays");
    if (seq == NULL) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(key, &view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *result = NULL;
    Entry *entries = NULL, *tmp = NULL;
    const Py_ssize_t n = view.itemsize ? view.len / view.itemsize : 0;
    entries = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Entry));
    tmp = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Entry));
    if (entries == NULL || tmp == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (read_keys(&view, entries, n) < 0) goto done;
    merge_sort(entries, tmp, 0, n);
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    result = PyList_New(count);
    if (result == NULL) goto done;
    for (Py_ssize_t c = 0; c < count; c++) {
        PyObject *sorted = gather(PySequence_Fast_GET_ITEM(seq, c), entries, n);
        if (sorted == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, c, sorted);
    }
done:
    PyMem_Free(entries);
    PyMem_Free(tmp);
    PyBuffer_Release(&view);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"sort_columns", sort_columns, METH_VARARGS,
     "sort_columns(columns, key) -> the columns reordered by a stable sort on key: see _columns.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "callspan.analysis._columns",
    "Reordering column sets for spill files (optional; spill.sort_columns_py is the reference).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__columns(void)
{
    return PyModule_Create(&module_def);
}
