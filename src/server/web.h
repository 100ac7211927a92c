/* The web page served at / (HTML, CSS and script in one document). */
#ifndef SDGEN_SERVER_WEB_H
#define SDGEN_SERVER_WEB_H

extern const char srv_web_page[];

#endif
