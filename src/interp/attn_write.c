/*
 * attn_write.c — attention patterns as JSON, .npy, PNG and a self-contained
 * HTML page (head view + model view, inline JS/CSS, works offline).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../error.h"
#include "interp.h"

/* ------------------------------------------------------------ JSON */

/* The document of docs/INTERPRETABILITY.md ("loupe-attention" v1); the
 * matrices with `digits` significant digits (0 = exact float32). */
static cJSON *lp_attention_doc(const loupe_attention *a, const char *title, int digits,
                               int flat) {
    int T = a->tokens.n;
    int shape[4] = {a->n_layers, a->n_heads, T, T};
    int flat_shape[3] = {a->n_layers, a->n_heads, T * T};
    cJSON *root = lp_json_doc("loupe-attention", title);
    int ok = root && lp_json_add(root, "tokens", lp_json_strings(a->tokens.text, T)) &&
             lp_json_add(root, "token_ids", lp_json_ints(a->tokens.ids, T)) &&
             lp_json_add(root, "layers", lp_json_int_array(a->layers, a->n_layers)) &&
             lp_json_add(root, "heads", lp_json_int_array(a->heads, a->n_heads)) &&
             lp_json_add(root, "shape", lp_json_int_array(shape, 4)) &&
             lp_json_add(root, "attention",
                         flat ? lp_json_floats(a->data, 3, flat_shape, digits)
                              : lp_json_floats(a->data, 4, shape, digits));
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *loupe_attention_json(const loupe_attention *a, const char *title) {
    if (!a) return NULL;
    return lp_json_finish(lp_attention_doc(a, title, 0, 0));
}

/* ------------------------------------------------------------ HTML */

static const char lp_attn_css[] =
    "<style>"
    ".controls{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:8px 0}"
    ".controls button{padding:4px 10px;border:1px solid #bbb;background:#f7f7f7;"
    "border-radius:4px;cursor:pointer}.controls button.on{background:#333;color:#fff}"
    ".hsel{display:inline-flex;align-items:center;gap:2px;margin-right:6px;font-size:12px}"
    ".hsel i{display:inline-block;width:12px;height:12px;border-radius:2px}"
    "#hv text{font:13px ui-monospace,Menlo,Consolas,monospace;cursor:default}"
    "#mv{display:grid;gap:6px;align-items:start}"
    "#mv .cell{font-size:11px;text-align:center;cursor:pointer}"
    "#mv canvas{width:100px;height:100px;image-rendering:pixelated;border:1px solid #ccc}"
    "#mv .lab{font-size:12px;font-weight:600;align-self:center}"
    "</style>";

/* The page script: reads the JSON data element and draws both views. */
static const char lp_attn_js[] =
    "<script>(function(){\n"
    "var D=JSON.parse(document.getElementById('loupe-data').textContent);\n"
    "var T=D.tokens.length,NL=D.layers.length,NH=D.heads.length,NS='http://www.w3.org/2000/svg';\n"
    "var layer=0,on=[];for(var h=0;h<NH;h++)on.push(true);\n"
    "function col(h){return 'hsl('+Math.round(h*360/Math.max(NH,1)+210)%360+',70%,42%)';}\n"
    "function show(t){return t.replace(/ /g,'\\u2423').replace(/\\n/g,'\\\\n').replace(/\\t/g,'\\\\t');}\n"
    "function el(n,a,p){var e=document.createElementNS(NS,n);for(var k in a)e.setAttribute(k,a[k]);"
    "if(p)p.appendChild(e);return e;}\n"
    "function w(l,h,q,k){return D.attention[l][h][q*T+k];}\n"
    /* layer selector and head toggles */
    "var sel=document.getElementById('layer');\n"
    "D.layers.forEach(function(L,i){var o=document.createElement('option');o.value=i;"
    "o.textContent=L;sel.appendChild(o);});\n"
    "sel.onchange=function(){layer=+sel.value;drawHead();};\n"
    "var hs=document.getElementById('heads');\n"
    "D.heads.forEach(function(H,i){var lab=document.createElement('label');lab.className='hsel';"
    "var c=document.createElement('input');c.type='checkbox';c.checked=true;"
    "c.onchange=function(){on[i]=c.checked;drawHead();};var sw=document.createElement('i');"
    "sw.style.background=col(i);lab.appendChild(c);lab.appendChild(sw);"
    "lab.appendChild(document.createTextNode('head '+H));hs.appendChild(lab);});\n"
    /* head view: queries on the left, keys on the right */
    "var svg=document.getElementById('hv'),RH=20,XL=170,XR=400,TOP=24;\n"
    "function drawHead(){while(svg.firstChild)svg.removeChild(svg.firstChild);\n"
    " svg.setAttribute('width',XR+180);svg.setAttribute('height',TOP+T*RH+8);\n"
    " el('text',{x:XL,y:14,'text-anchor':'end',fill:'#666'},svg).textContent='query';\n"
    " el('text',{x:XR,y:14,fill:'#666'},svg).textContent='key';\n"
    " var lines=el('g',{},svg);\n"
    " for(var h=0;h<NH;h++){if(!on[h])continue;for(var q=0;q<T;q++)for(var k=0;k<=q;k++){\n"
    "  var v=w(layer,h,q,k);if(v<0.01)continue;\n"
    "  el('line',{x1:XL+6,y1:TOP+q*RH+RH/2-4,x2:XR-6,y2:TOP+k*RH+RH/2-4,stroke:col(h),"
    "'stroke-width':2,'stroke-opacity':v,'data-q':q,'data-k':k},lines);}}\n"
    " function focus(attr,i){var ls=lines.childNodes;for(var j=0;j<ls.length;j++)"
    "ls[j].style.display=(i<0||+ls[j].getAttribute(attr)==i)?'':'none';}\n"
    " for(var t=0;t<T;t++){(function(t){\n"
    "  var a=el('text',{x:XL,y:TOP+t*RH+RH/2,'text-anchor':'end'},svg);a.textContent=show(D.tokens[t]);\n"
    "  var b=el('text',{x:XR,y:TOP+t*RH+RH/2},svg);b.textContent=show(D.tokens[t]);\n"
    "  a.onmouseover=function(){focus('data-q',t);};b.onmouseover=function(){focus('data-k',t);};\n"
    "  a.onmouseout=b.onmouseout=function(){focus('',-1);};})(t);}\n"
    "}\n"
    /* model view: one small heatmap per (layer, head) */
    "var RAMP=[[255,255,255],[255,237,160],[254,178,76],[240,59,32],[150,0,70],[50,0,60]];\n"
    "function ramp(v){v=Math.max(0,Math.min(1,v))*(RAMP.length-1);var i=Math.min(Math.floor(v),"
    "RAMP.length-2),f=v-i;return RAMP[i].map(function(c,j){return Math.round((1-f)*c+f*RAMP[i+1][j]);});}\n"
    "function drawModel(){var mv=document.getElementById('mv');"
    "mv.style.gridTemplateColumns='60px repeat('+NH+',104px)';\n"
    " mv.appendChild(document.createElement('div'));\n"
    " D.heads.forEach(function(H){var d=document.createElement('div');d.className='lab';"
    "d.textContent='head '+H;mv.appendChild(d);});\n"
    " for(var l=0;l<NL;l++){var lab=document.createElement('div');lab.className='lab';"
    "lab.textContent='layer '+D.layers[l];mv.appendChild(lab);\n"
    "  for(var h=0;h<NH;h++){(function(l,h){var cell=document.createElement('div');cell.className='cell';\n"
    "   var cv=document.createElement('canvas');cv.width=T;cv.height=T;var cx=cv.getContext('2d');\n"
    "   var img=cx.createImageData(T,T);for(var q=0;q<T;q++)for(var k=0;k<T;k++){"
    "var c=ramp(w(l,h,q,k)),o=4*(q*T+k);img.data[o]=c[0];img.data[o+1]=c[1];img.data[o+2]=c[2];"
    "img.data[o+3]=255;}\n"
    "   cx.putImageData(img,0,0);cell.title='layer '+D.layers[l]+' head '+D.heads[h];"
    "cell.appendChild(cv);\n"
    "   cell.onclick=function(){sel.value=l;layer=l;for(var i=0;i<NH;i++){on[i]=i==h;"
    "hs.querySelectorAll('input')[i].checked=on[i];}tab('head');drawHead();};\n"
    "   mv.appendChild(cell);})(l,h);}}\n"
    "}\n"
    "function tab(n){document.getElementById('headview').hidden=n!='head';"
    "document.getElementById('modelview').hidden=n!='model';\n"
    " document.getElementById('tab-head').className=n=='head'?'on':'';"
    "document.getElementById('tab-model').className=n=='model'?'on':'';}\n"
    "document.getElementById('tab-head').onclick=function(){tab('head');};\n"
    "document.getElementById('tab-model').onclick=function(){tab('model');};\n"
    /* #model opens the model view; #head=L.H the head view of one head */
    "var m=/^#head=(\\d+)\\.(\\d+)$/.exec(location.hash);\n"
    "if(m){var li=D.layers.indexOf(+m[1]),hi=D.heads.indexOf(+m[2]);if(li>=0&&hi>=0){layer=li;"
    "sel.value=li;for(var i=0;i<NH;i++){on[i]=i==hi;hs.querySelectorAll('input')[i].checked=on[i];}}}\n"
    "drawHead();drawModel();tab(location.hash=='#model'?'model':'head');\n"
    "})();</script>";

/* The tokens as static text, so the page reads (and searches) without JS. */
static void lp_html_token_list(lp_sb *b, const loupe_tokens *t) {
    lp_sb_puts(b, "<div class=\"tokens\">");
    for (int i = 0; i < t->n; i++) {
        lp_sb_printf(b, "<span class=\"tok\" style=\"background:#eef\" title=\"%d: id %d\">", i,
                     t->ids[i]);
        lp_sb_html_token(b, t->text[i], 1);
        lp_sb_puts(b, "</span> ");
    }
    lp_sb_puts(b, "</div>");
}

char *loupe_attention_html(const loupe_attention *a, const char *title) {
    if (!a) return NULL;
    char *json = lp_json_finish(lp_attention_doc(a, title, 4, 1));
    if (!json) return NULL;
    lp_sb b = {0};
    lp_html_begin(&b, title, "Attention patterns");
    lp_sb_puts(&b, lp_attn_css);
    lp_sb_printf(&b, "<div class=\"meta\">%d tokens · %d layer(s) · %d head(s) per layer. "
                     "Head view: lines join each query token (left) to the keys it attends "
                     "to (right), opacity = weight; hover a token to isolate its lines. "
                     "Model view: every head's pattern (rows = queries, columns = keys); "
                     "click one to open it.</div>",
                 a->tokens.n, a->n_layers, a->n_heads);
    lp_html_token_list(&b, &a->tokens);
    lp_sb_puts(&b, "<div class=\"controls\"><button id=\"tab-head\">Head view</button>"
                   "<button id=\"tab-model\">Model view</button>"
                   "<label>layer <select id=\"layer\"></select></label>"
                   "<span id=\"heads\"></span></div>"
                   "<div id=\"headview\"><svg id=\"hv\" xmlns=\"http://www.w3.org/2000/svg\">"
                   "</svg></div><div id=\"modelview\" hidden><div id=\"mv\"></div></div>"
                   "<script type=\"application/json\" id=\"loupe-data\">");
    lp_sb_json_for_script(&b, json);
    free(json);
    lp_sb_puts(&b, "</script>");
    lp_sb_puts(&b, lp_attn_js);
    lp_html_end(&b);
    return lp_sb_finish(&b);
}

/* ------------------------------------------------------------ files */

loupe_status loupe_attention_write(const loupe_attention *a, const char *title,
                                   const char *path) {
    if (!a || !path) return lp_fail(LOUPE_ERR_ARG, "loupe_attention_write: NULL argument");
    char ext[16];
    lp_path_ext(path, ext, sizeof ext);
    int T = a->tokens.n;
    if (strcmp(ext, "npy") == 0) {
        int64_t shape[4] = {a->n_layers, a->n_heads, T, T};
        return loupe_npy_write(path, a->data, 4, shape);
    }
    if (strcmp(ext, "png") == 0) {
        int scale = T >= 160 ? 1 : 160 / T;
        if (scale > 16) scale = 16;
        return loupe_heatmap_png(path, a->data, a->n_layers, a->n_heads, T, scale);
    }
    char *doc;
    if (strcmp(ext, "json") == 0) doc = loupe_attention_json(a, title);
    else if (strcmp(ext, "html") == 0 || strcmp(ext, "htm") == 0) doc = loupe_attention_html(a, title);
    else
        return lp_fail(LOUPE_ERR_ARG, "%s: unknown output type '.%s' (use .json, .npy, .html or .png)",
                       path, ext);
    if (!doc) return lp_fail(LOUPE_ERR_NOMEM, "%s: out of memory building the document", path);
    loupe_status st = loupe_write_text(path, doc);
    free(doc);
    return st;
}
